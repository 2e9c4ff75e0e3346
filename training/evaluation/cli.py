"""``python -m training evaluate``: every evaluation of a tokenizer (and its generator) as Markdown and JSON."""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn

from titok_core.sampler import SCHEDULES, SamplingSettings

from ..checkpoint import load_checkpoint
from ..data import FASHION_MNIST_DIR, load_fashion_mnist
from ..report import save_grid
from .features import FID_NOTE
from .generation import default_settings, evaluate_generation, generation_table, jsonable, samples_per_class
from .inception import load_inception
from .probe import linear_probe, probe_table
from .reconstruction import evaluate_reconstruction, reconstruct, reconstruction_table


def _parser() -> argparse.ArgumentParser:
    """The command line of ``main``."""
    p = argparse.ArgumentParser(prog="python -m training evaluate", description=__doc__)
    p.add_argument("--tokenizer", required=True, help="TiTok checkpoint folder")
    p.add_argument("--generator", help="generator checkpoint folder (needs --classifier)")
    p.add_argument("--classifier", help="FMNIST classifier folder: rFID, gFID, IS and class accuracy")
    p.add_argument("--judge", help="an independent classifier folder (another seed/width): class kept by it too")
    p.add_argument("--teacher", help="2D teacher checkpoint folder (MaskGIT-VQGAN or a 2D TiTok), reconstruction only")
    p.add_argument(
        "--data-root",
        default=str(FASHION_MNIST_DIR),
        help="Fashion-MNIST folder (*-ubyte.gz): test images for reconstruction and real FID statistics, train "
        "images for the probe (default: %(default)s)",
    )
    p.add_argument("--num-test", type=int, default=10000, help="test images for reconstruction and real FID stats")
    p.add_argument("--num-per-class", type=int, default=100, help="generated images per class")
    p.add_argument("--probe-train", type=int, default=10000, help="train images for the linear probe (0: no probe)")
    p.add_argument("--probe-steps", type=int, default=200, help="L-BFGS iterations of the linear probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write all numbers as JSON here")
    p.add_argument("--grid-dir", help="write reconstructions.png and samples.png here")
    p.add_argument("--inception", metavar="WEIGHTS", help="also Inception FID; needs the pytorch-fid package")
    g = p.add_argument_group("sampling (default: the generator's own settings)")
    g.add_argument("--num-steps", type=int)
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--guidance-schedule", choices=SCHEDULES)
    g.add_argument("--temperature", type=float)
    g.add_argument("--softmax-annealing", action="store_true")
    return p


def _settings(args: argparse.Namespace, generator: nn.Module) -> SamplingSettings:
    """The generator's settings with the command line's overrides."""
    names = ("num_steps", "guidance_scale", "guidance_schedule", "temperature")
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    return dataclasses.replace(default_settings(generator), softmax_annealing=args.softmax_annealing, **overrides)


def _save_reconstruction_grid(folder: Path, images: torch.Tensor, models: dict[str, nn.Module]) -> None:
    """First 16 test images on one row, each model's reconstructions in a row below."""
    first = images[:16]
    rows = [first] + [reconstruct(m, first)[1] for m in models.values()]
    save_grid(torch.cat(rows), folder / "reconstructions.png", nrow=len(first))


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluations, print Markdown tables, write JSON (--out) and grids (--grid-dir); returns the results."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.generator and not args.classifier:
        parser.error("--generator needs --classifier (gFID, IS and class accuracy use it)")
    inception = None
    if args.inception:
        try:
            inception = load_inception(args.inception, args.device)
        except (RuntimeError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")

    tokenizer = load_checkpoint(args.tokenizer, args.device)
    classifier = load_checkpoint(args.classifier, args.device, kind="fmnist-classifier") if args.classifier else None
    judge = load_checkpoint(args.judge, args.device, kind="fmnist-classifier") if args.judge else None
    test_images, test_labels = load_fashion_mnist("test", root=args.data_root, limit=args.num_test)
    data = {"dataset": "fashion-mnist", "root": args.data_root, "num_test": len(test_images)}
    print(f"Real images: the Fashion-MNIST test split, {len(test_images)} images from {args.data_root}\n")
    models = {"tokenizer": tokenizer}
    if args.teacher:
        models["teacher"] = load_checkpoint(args.teacher, args.device)

    bs = args.batch_size
    results: dict = {"args": vars(args), "data": data, "fid_note": FID_NOTE, "reconstruction": {}}
    for name, model in models.items():
        result = evaluate_reconstruction(model, test_images, classifier, bs, inception, test_labels, judge)
        results["reconstruction"][name] = {**result, "checkpoint": getattr(args, name)}
    tables = [reconstruction_table(results["reconstruction"])]

    samples = None
    if args.generator:
        generator = load_checkpoint(args.generator, args.device)
        gen = evaluate_generation(
            generator,
            tokenizer,
            classifier,
            args.num_per_class,
            _settings(args, generator),
            args.seed,
            bs,
            real_images=test_images,
            inception=inception,
            judge=judge,
        )
        samples = samples_per_class(gen["images"], gen["labels"])
        results["generation"] = {**jsonable(gen), "checkpoint": args.generator}
        tables.append(generation_table(Path(args.generator).name, results["generation"]))

    if args.probe_train > 0:
        train_images, train_labels = load_fashion_mnist("train", root=args.data_root, limit=args.probe_train)
        acc = linear_probe(
            tokenizer, train_images, train_labels, test_images, test_labels, args.probe_steps, args.seed, batch_size=bs
        )
        probe = {"accuracy": acc, "num_train": len(train_images), "num_test": len(test_images)}
        results["linear_probe"] = {**probe, "steps": args.probe_steps}
        tables.append(probe_table(Path(args.tokenizer).name, results["linear_probe"]))

    print("\n\n".join(tables))
    if args.grid_dir:
        _save_reconstruction_grid(Path(args.grid_dir), test_images, models)
        if samples is not None:
            save_grid(samples, Path(args.grid_dir) / "samples.png", nrow=len(samples) // generator.config.num_classes)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results
