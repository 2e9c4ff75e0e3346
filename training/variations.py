"""Variations measured: how far from its source an image moves as more of its tokens are re-generated, for its own
class and for another.

    python -m training variations --out-dir docs

For ``--num-images`` Fashion-MNIST test images and each strength (the fraction of the 32 tokens hidden and
re-generated, from the served sampler: ``titok_core.sampler.vary``, positions drawn from each image's seed), two
conditions: the image's own class ("same") and another class drawn per image ("other"). Per strength and condition:
PSNR of the variation against the source image, the distance between their classifier features (relative to the
mean distance between two different test images, so 1.0 is "as far as another image"), and the share the classifier
puts in the target class. Writes ``variations.json`` (the table), ``variations-<strength>.png`` (a grid per strength:
rows are images; columns the source, two same-class and two other-class variations) and prints the table.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from titok_core.sampler import strength_mask, vary

from .checkpoint import load_checkpoint
from .data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist
from .evaluation import classify, decode, reconstruct
from .evaluation.generation import _logits_fn, default_settings
from .inference import eval_mode
from .metrics import psnr
from .models import check_pair
from .models.blocks import to_unit_float
from .report import markdown_table

STRENGTHS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
GRID_ROWS, GRID_SCALE = 6, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training variations", description=__doc__)
    p.add_argument("--tokenizer", default="checkpoints/titok-fmnist/tokenizer")
    p.add_argument("--generator", default="checkpoints/titok-fmnist/generator")
    p.add_argument("--classifier", default="checkpoints/fmnist-classifier")
    p.add_argument("--data-root", default=str(FASHION_MNIST_DIR))
    p.add_argument("--num-images", type=int, default=100, help="test images (the first ones)")
    p.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS))
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (and + num_images for the grid's 2nd)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out-dir", help="write variations.json and the grids here")
    return p


def other_classes(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """A target class per image, uniform over the classes other than its own."""
    shift = np.random.default_rng(seed).integers(1, num_classes, len(labels))
    return (labels + shift) % num_classes


def _grid(columns: list[torch.Tensor], path: Path) -> None:
    """Rows: images; columns: the given uint8 (R, 3, H, W) stacks, enlarged; grey PNG (the images are grey)."""
    cells = [c[:GRID_ROWS].float().mean(1) for c in columns]  # (R, H, W) each
    r, h, w = cells[0].shape
    s = GRID_SCALE
    canvas = np.full((r * (h * s + 2) - 2, len(cells) * (w * s + 2) - 2), 255, dtype=np.uint8)
    for j, col in enumerate(cells):
        big = col.repeat_interleave(s, 1).repeat_interleave(s, 2).round().clamp(0, 255).to(torch.uint8).numpy()
        for i in range(r):
            canvas[i * (h * s + 2) : i * (h * s + 2) + h * s, j * (w * s + 2) : j * (w * s + 2) + w * s] = big[i]
    Image.fromarray(canvas, "L").save(path, optimize=True)


def run(args) -> dict:
    tokenizer = load_checkpoint(args.tokenizer).eval()
    generator = load_checkpoint(args.generator).eval()
    classifier = load_checkpoint(args.classifier, kind="fmnist-classifier").eval()
    check_pair(tokenizer.config, generator.config)
    cfg, settings = generator.config, default_settings(generator)
    images, labels_t = load_fashion_mnist("test", root=args.data_root, limit=args.num_images)
    labels = labels_t.numpy()
    sources, _ = reconstruct(tokenizer, images, args.batch_size)
    real = to_unit_float(images)
    real_feats, _ = classify(classifier, images, args.batch_size)
    # the distance between two different test images: the unit of the feature distance
    unit = float(np.linalg.norm(real_feats - np.roll(real_feats, 1, axis=0), axis=1).mean())
    targets = {"same": labels, "other": other_classes(labels, cfg.num_classes, args.seed)}
    n, seeds = len(images), [args.seed + i for i in range(len(images))]
    dims = dict(codebook_size=cfg.codebook_size, num_classes=cfg.num_classes, settings=settings)
    logits_fn = _logits_fn(generator)

    def make(strength: float, target: np.ndarray, first_seed: int) -> torch.Tensor:
        item_seeds = [first_seed + i for i in range(n)]
        hidden = [strength_mask(strength, s, cfg.seq_len) for s in item_seeds]
        with eval_mode(generator):
            tokens = vary(logits_fn, sources.numpy(), hidden, target.tolist(), item_seeds, **dims, batch_size=250)
        return decode(tokenizer, torch.from_numpy(tokens), args.batch_size)

    rows, table = [], []
    for strength in args.strengths:
        grid = [images]
        for name, target in targets.items():
            varied = make(strength, target, seeds[0])
            feats, logits = classify(classifier, varied, args.batch_size)
            row = {
                "strength": strength,
                "tokens": int(len(strength_mask(strength, 0, cfg.seq_len))),
                "target": name,
                "psnr_db": float(psnr(to_unit_float(varied), real).mean()),
                "feature_distance": float(np.linalg.norm(feats - real_feats, axis=1).mean() / unit),
                "target_accuracy": float((logits.argmax(1) == target).mean()),
                "source_class_kept": float((logits.argmax(1) == labels).mean()),
            }
            rows.append(row)
            table.append(
                [
                    f"{strength:g}",
                    row["tokens"],
                    name,
                    f"{row['psnr_db']:.2f}",
                    f"{row['feature_distance']:.2f}",
                    f"{100 * row['target_accuracy']:.0f}%",
                    f"{100 * row['source_class_kept']:.0f}%",
                ]
            )
            if args.out_dir:  # a second variation per image for the grid (other seeds)
                grid += [varied, make(strength, target, seeds[0] + n)[:GRID_ROWS]]
        if args.out_dir:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
            _grid(grid, Path(args.out_dir) / f"variations-{int(round(strength * 1000)):04d}.png")
        print(f"strength {strength:g} done", flush=True)
    header = [
        "strength",
        "tokens re-generated",
        "conditioned on",
        "PSNR (dB)",
        "feature distance",
        "target class",
        "source class",
    ]
    text = markdown_table(header, table, "rrlrrrr")
    print(text)
    other = [FASHION_MNIST_CLASSES[c] for c in targets["other"][:GRID_ROWS]]
    result = {
        "args": vars(args),
        "settings": dict(vars(settings)),
        "feature_distance_unit": unit,
        "grid_rows": {"source": [FASHION_MNIST_CLASSES[c] for c in labels[:GRID_ROWS]], "other": other},
        "rows": rows,
    }
    if args.out_dir:
        (Path(args.out_dir) / "variations.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict:
    torch.manual_seed(0)
    return run(_parser().parse_args(argv))
