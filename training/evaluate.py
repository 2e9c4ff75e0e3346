"""Evaluation: reconstruction (PSNR/SSIM/MAE/MSE, codebook usage, rFID), generation (gFID, IS, class accuracy),
a linear probe on the quantized tokens, and sample grids.

FID and IS use the features and softmax of the Fashion-MNIST classifier trained in this repository
(``training/classifier.py``), not Inception, so the numbers compare models evaluated here, not papers.
Generation runs the service's MaskGIT sampler (``service/sampler.py``): what we measure is what we serve.

``python -m training.evaluate --tokenizer DIR [--generator DIR] [--classifier DIR] [--teacher DIR] ...``
prints Markdown tables and writes every number as JSON (see ``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from titok_core.sampler import SCHEDULES, SamplingSettings, generate

from .metrics import class_kept, codebook_usage, feature_stats, frechet_distance, inception_score, mae, mse, psnr, ssim
from .models import MaskGITVQGAN, TiTok

FID_NOTE = "FID over the features of the Fashion-MNIST classifier trained in this repository (not Inception)"
INCEPTION_HINT = "--inception needs the `pytorch-fid` package (pip install pytorch-fid), which brings torchvision"

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (B, 3, H, W) -> features (B, D)
PER_IMAGE_METRICS = {"psnr": psnr, "ssim": ssim, "mae": mae, "mse": mse}

# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter."""
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Every module in eval mode for the block, then each submodule's own flag back (frozen parts stay frozen)."""
    flags = [(m, m.training) for model in models if model is not None for m in model.modules()]
    for model in models:
        if model is not None:
            model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of at most batch_size rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, rounded to nearest, as a served PNG would hold them."""
    return (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)


def _codec(tokenizer: nn.Module) -> tuple[Callable, Callable]:
    """(encode, decode) of a TiTok tokenizer or a MaskGIT-VQGAN: images -> ids (B, N) -> images in [0, 1]."""
    if isinstance(tokenizer, TiTok):
        return tokenizer.encode, tokenizer.decode_tokens
    if isinstance(tokenizer, MaskGITVQGAN):
        return tokenizer.encode, tokenizer.decode_codes
    raise TypeError(f"not a tokenizer: {type(tokenizer).__name__} (want TiTok or MaskGITVQGAN)")


def num_tokens(tokenizer: nn.Module) -> int:
    """Tokens per image: TiTok's latent tokens (or grid) or the VQGAN's h*w codes."""
    _codec(tokenizer)  # type check
    cfg = tokenizer.config
    return cfg.num_tokens if isinstance(tokenizer, TiTok) else cfg.grid_size**2


def describe(model: nn.Module) -> str:
    """A short human name: "TiTok 1D, 32 tokens", "MaskGIT-VQGAN 2D, 8x8 codes", ..."""
    cfg = model.config
    if isinstance(model, MaskGITVQGAN):
        return f"MaskGIT-VQGAN 2D, {cfg.grid_size}x{cfg.grid_size} codes"
    if isinstance(model, TiTok):
        layout = f"2D grid {cfg.grid_size}x{cfg.grid_size}" if cfg.grid_tokens else "1D"
        return f"TiTok {layout}, {cfg.num_tokens} tokens, {cfg.decoder_head} head"
    return type(model).__name__


# ---------------------------------------------------------------------------------------------------
# Features and FID
# ---------------------------------------------------------------------------------------------------


@torch.inference_mode()
def extract(fn: FeatureFn, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Run a feature function over images in batches -> float64 (N, D) on the CPU."""
    return torch.cat([fn(batch).flatten(1).double().cpu() for batch in _batches(images, batch_size)]).numpy()


@torch.inference_mode()
def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Classifier features (N, D) and logits (N, K), float64, from one pass per batch in eval mode."""
    device = _device(classifier)
    feats, logits = [], []
    with _eval_mode(classifier):
        for batch in _batches(images, batch_size):
            f = classifier.features(batch.to(device))
            feats.append(f.double().cpu())
            logits.append(classifier.head(f).double().cpu())  # == forward(x) in eval mode (dropout is off)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N, D) and (M, D)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, K)."""
    z = logits - logits.max(axis=1, keepdims=True)  # shift: no overflow
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> FeatureFn:
    """pytorch-fid's InceptionV3 pool3 (2048-d) with a local weights file; needs the `pytorch-fid` package."""
    try:
        from pytorch_fid import inception as fid_inception
    except ImportError as e:
        raise RuntimeError(INCEPTION_HINT) from e
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights at {path} (want pytorch-fid's pt_inception-2015-12-05-*.pth)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state  # the local file, never the network
    try:
        model = fid_inception.InceptionV3([3]).to(device).eval()
    finally:
        fid_inception.load_state_dict_from_url = original

    def features(images: torch.Tensor) -> torch.Tensor:
        x = images.to(device).float() / 255.0 if images.dtype == torch.uint8 else images.to(device).float()
        return model(x)[0]  # (B, 2048, 1, 1); it resizes to 299x299 itself

    return features


# ---------------------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------------------


@torch.inference_mode()
def reconstruct(tokenizer: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode + decode in batches: (tokens int64 (N, T), reconstructions uint8 (N, 3, H, W)), on the CPU."""
    if len(images) == 0:
        raise ValueError("no images to reconstruct")
    encode, decode = _codec(tokenizer)
    device = _device(tokenizer)
    tokens, recons = [], []
    with _eval_mode(tokenizer):
        for batch in _batches(images, batch_size):
            ids = encode(batch.to(device))  # (B, T)
            tokens.append(ids.cpu())
            recons.append(to_uint8(decode(ids)).cpu())  # (B, 3, H, W)
    return torch.cat(tokens), torch.cat(recons)


def reconstruction_metrics(
    real: torch.Tensor,
    recon: torch.Tensor,
    tokens: torch.Tensor,
    codebook_size: int,
    classifier: nn.Module | None = None,
    inception: FeatureFn | None = None,
    batch_size: int = 256,
    labels: torch.Tensor | None = None,
    judge: nn.Module | None = None,
) -> dict:
    """Mean PSNR/SSIM/MAE/MSE ([0, 1] scale), codebook usage, and rFID when a classifier (or Inception) is given.

    With labels, also class kept (``metrics.class_kept``) by the classifier and by an independent ``judge``
    classifier: the perceptual loss trains on the first one's features, so it is not an unbiased witness.
    """
    per_image = {name: [] for name in PER_IMAGE_METRICS}
    for a, b in zip(_batches(real, batch_size), _batches(recon, batch_size), strict=True):
        for name, fn in PER_IMAGE_METRICS.items():
            per_image[name].append(fn(a, b))  # batched: SSIM in float64 is memory-hungry
    out = {name: float(torch.cat(values).mean()) for name, values in per_image.items()}
    out["codebook_usage"] = codebook_usage(tokens, codebook_size)
    if classifier is not None:
        (real_feats, real_logits), (recon_feats, recon_logits) = (
            classify(classifier, x, batch_size) for x in (real, recon)
        )
        out["rfid"] = fid_from_features(real_feats, recon_feats)
        if labels is not None:
            out["class_kept"] = class_kept(real_logits, recon_logits, labels)
    if judge is not None and labels is not None:
        out["class_kept_judge"] = class_kept(
            classify(judge, real, batch_size)[1], classify(judge, recon, batch_size)[1], labels
        )
    if inception is not None:
        out["rfid_inception"] = fid_from_features(extract(inception, real, 64), extract(inception, recon, 64))
    return out


def evaluate_reconstruction(
    tokenizer: nn.Module,
    images_uint8: torch.Tensor,
    classifier: nn.Module | None = None,
    batch_size: int = 256,
    inception: FeatureFn | None = None,
    labels: torch.Tensor | None = None,
    judge: nn.Module | None = None,
) -> dict:
    """Reconstruct the images with a TiTok or a MaskGIT-VQGAN and report the metrics of reconstruction_metrics."""
    tokens, recon = reconstruct(tokenizer, images_uint8, batch_size)
    metrics = reconstruction_metrics(
        images_uint8, recon, tokens, tokenizer.config.codebook_size, classifier, inception, batch_size, labels, judge
    )
    info = {"model": describe(tokenizer), "num_images": len(images_uint8), "num_tokens": num_tokens(tokenizer)}
    return {**info, "codebook_size": tokenizer.config.codebook_size, **metrics}


# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------


def default_settings(generator: nn.Module) -> SamplingSettings:
    """The sampling settings a generator was tuned for (its config's defaults)."""
    cfg = generator.config
    return SamplingSettings(
        num_steps=cfg.num_steps,
        guidance_scale=cfg.guidance_scale,
        guidance_schedule=cfg.guidance_schedule,
        temperature=cfg.temperature,
    )


def _logits_fn(generator: nn.Module) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The sampler's view of a torch generator: numpy int64 in, float32 logits (B, N, K) out."""
    device = _device(generator)

    def logits_fn(tokens: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = generator(torch.from_numpy(tokens).to(device), torch.from_numpy(class_ids).to(device))
        return logits.float().cpu().numpy()

    return logits_fn


@torch.inference_mode()
def decode(tokenizer: nn.Module, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Token ids (M, N) -> uint8 images (M, 3, H, W) on the CPU, in batches."""
    _, dec = _codec(tokenizer)
    device = _device(tokenizer)
    with _eval_mode(tokenizer):
        return torch.cat([to_uint8(dec(batch.to(device))).cpu() for batch in _batches(tokens, batch_size)])


def _check_pair(generator: nn.Module, tokenizer: nn.Module) -> None:
    """The generator must speak the tokenizer's language: same sequence length and codebook."""
    g = generator.config
    n, k = num_tokens(tokenizer), tokenizer.config.codebook_size
    if (g.seq_len, g.codebook_size) != (n, k):
        raise ValueError(
            f"generator expects {g.seq_len} tokens from a {g.codebook_size}-code book, "
            f"but the tokenizer gives {n} tokens from {k} codes"
        )


def evaluate_generation(
    generator: nn.Module,
    tokenizer: nn.Module,
    classifier: nn.Module,
    num_per_class: int,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 250,
    real_images: torch.Tensor | None = None,
    inception: FeatureFn | None = None,
    judge: nn.Module | None = None,
) -> dict:
    """num_per_class samples per class from the service sampler, decoded: gFID, IS, class accuracy (also by an
    independent judge classifier when given), images, labels."""
    if num_per_class < 1:
        raise ValueError(f"num_per_class must be >= 1, not {num_per_class}")
    _check_pair(generator, tokenizer)
    cfg = generator.config
    settings = default_settings(generator) if settings is None else settings
    labels = torch.arange(cfg.num_classes).repeat_interleave(num_per_class)  # (M,), class-major
    seeds = [seed + k for k in range(len(labels))]  # item k uses seed + k: all distinct, reproducible alone
    with _eval_mode(generator):  # dropout off: the sampler needs deterministic logits
        tokens = generate(
            _logits_fn(generator),
            labels.tolist(),
            seeds,
            seq_len=cfg.seq_len,
            codebook_size=cfg.codebook_size,
            num_classes=cfg.num_classes,
            settings=settings,
            batch_size=batch_size,
        )
    images = decode(tokenizer, torch.from_numpy(tokens), batch_size)
    if real_images is None:  # the Fashion-MNIST test set
        from .data import load_fashion_mnist

        real_images = load_fashion_mnist("test")[0]
    feats, logits = classify(classifier, images, batch_size)
    if logits.shape[1] != cfg.num_classes:
        raise ValueError(f"classifier has {logits.shape[1]} classes, generator {cfg.num_classes}")
    hits = logits.argmax(axis=1) == labels.numpy()
    out = {
        "num_images": len(images),
        "num_per_class": num_per_class,
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "gfid": fid_from_features(classify(classifier, real_images, batch_size)[0], feats),
        "inception_score": inception_score(_softmax(logits)),
        "class_accuracy": float(hits.mean()),
        "per_class_accuracy": [float(hits[labels.numpy() == c].mean()) for c in range(cfg.num_classes)],
        "codebook_usage": codebook_usage(tokens, cfg.codebook_size),
    }
    if judge is not None:
        out["class_accuracy_judge"] = float(
            (classify(judge, images, batch_size)[1].argmax(axis=1) == labels.numpy()).mean()
        )
    if inception is not None:
        out["gfid_inception"] = fid_from_features(extract(inception, real_images, 64), extract(inception, images, 64))
    return {**out, "images": images, "labels": labels}  # callers drop the tensors with jsonable() before JSON


def jsonable(result: dict) -> dict:
    """A result without its tensors (the generated images and labels)."""
    return {k: v for k, v in result.items() if not isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()  # not inference_mode: the features feed an autograd graph afterwards
def token_features(tokenizer: TiTok, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The quantized token vectors of each image, flattened: float32 (B, N*C) on the CPU."""
    device = _device(tokenizer)
    feats = []
    with _eval_mode(tokenizer):
        for batch in _batches(images, batch_size):
            feats.append(tokenizer.tokens_to_latents(tokenizer.encode(batch.to(device))).flatten(1).float().cpu())
    return torch.cat(feats)


def linear_probe(
    tokenizer: TiTok,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    steps: int = 200,
    seed: int = 0,
    l2: float = 1e-4,
    batch_size: int = 256,
) -> float:
    """Test accuracy of a linear softmax classifier trained (full-batch L-BFGS) on standardized token vectors."""
    x_train = token_features(tokenizer, train_images, batch_size)
    x_test = token_features(tokenizer, test_images, batch_size)
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)  # clamp: constant dims (unused codes)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train = train_labels.long().cpu()
    num_classes = int(max(y_train.max(), test_labels.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    probe = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.copy_(0.01 * torch.randn(probe.weight.shape, generator=gen))
        probe.bias.zero_()
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(probe(x_train), y_train) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # one call runs up to `steps` L-BFGS iterations on the full batch
    with torch.no_grad():
        preds = probe(x_test).argmax(1)
    return float((preds == test_labels.cpu()).float().mean())


# ---------------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------------


def save_grid(images_uint8: torch.Tensor | np.ndarray, path: str | Path, nrow: int, gap_value: int = 255) -> Path:
    """Write uint8 images (M, 3, H, W) as a PNG grid of nrow images per row, 1px gaps between cells."""
    x = np.asarray(images_uint8.cpu() if isinstance(images_uint8, torch.Tensor) else images_uint8)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(f"want uint8 images (M >= 1, 3, H, W), got {x.dtype} {x.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, not {nrow}")
    m, _, h, w = x.shape
    cols, rows = min(nrow, m), math.ceil(m / nrow)
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, 3), gap_value, dtype=np.uint8)
    for i, img in enumerate(x):
        r, c = divmod(i, nrow)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img.transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def samples_per_class(images: torch.Tensor, labels: torch.Tensor, per_class: int = 10) -> torch.Tensor:
    """The first per_class images of each class, class by class (one grid row each)."""
    classes = torch.unique(labels)
    keep = min(per_class, min(int((labels == c).sum()) for c in classes))  # rows of equal length
    return torch.cat([images[labels == c][:keep] for c in classes])


# ---------------------------------------------------------------------------------------------------
# Markdown tables
# ---------------------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    """A number, or a dash when it was not measured."""
    return "—" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _kept(r: dict, key: str) -> str:
    """Class kept as "reconstructions% (originals%)", or a dash."""
    k = r.get(key)
    return "—" if k is None else f"{k['accuracy_reconstructed']:.1%} ({k['accuracy_original']:.1%})"


def reconstruction_table(results: dict[str, dict]) -> str:
    """One row per model: tokens, codebook, PSNR, SSIM, MAE, MSE, codebook usage, rFID, class kept (by the
    classifier and by the judge, when measured) and Inception rFID."""
    header = ["model", "tokens", "codebook", "PSNR (dB)", "SSIM", "MAE", "MSE", "codes used", "perplexity", "rFID*"]
    inception = any("rfid_inception" in r for r in results.values())
    kept = [k for k in ("class_kept", "class_kept_judge") if any(k in r for r in results.values())]
    rows = []
    for name, r in results.items():
        use = r["codebook_usage"]
        rows.append(
            [
                f"{name} ({r['model']})",
                str(r["num_tokens"]),
                str(r["codebook_size"]),
                f"{r['psnr']:.2f}",
                f"{r['ssim']:.4f}",
                f"{r['mae']:.4f}",
                f"{r['mse']:.5f}",
                f"{use['used_fraction']:.3f}",
                f"{use['perplexity']:.1f}",
                _fmt(r.get("rfid"), ".3f"),
            ]
            + [_kept(r, k) for k in kept]
            + ([_fmt(r.get("rfid_inception"), ".2f")] if inception else [])
        )
    header += [{"class_kept": "class kept*", "class_kept_judge": "class kept (judge)"}[k] for k in kept]
    header += ["Inception rFID"] if inception else []
    note = f"\n\n\\* {FID_NOTE}. MAE and MSE on the [0, 1] scale."
    if kept:
        note += " Class kept: the classifier's accuracy on the reconstructions (on the originals)."
    return _table(header, rows) + note


def generation_table(name: str, r: dict) -> str:
    """One row: the sampling settings, gFID, IS, class accuracy (and Inception gFID)."""
    s = r["settings"]
    header = ["generator", "images", "steps", "guidance", "schedule", "temperature", "gFID*", "IS*", "class acc."]
    row = [
        name,
        str(r["num_images"]),
        str(s["num_steps"]),
        f"{s['guidance_scale']:g}",
        s["guidance_schedule"] + (" + annealing" if s["softmax_annealing"] else ""),
        f"{s['temperature']:g}",
        f"{r['gfid']:.3f}",
        f"{r['inception_score']:.2f}",
        f"{r['class_accuracy']:.3f}",
    ]
    if "class_accuracy_judge" in r:
        header, row = header + ["class acc. (judge)"], row + [f"{r['class_accuracy_judge']:.3f}"]
    if "gfid_inception" in r:
        header, row = header + ["Inception gFID"], row + [f"{r['gfid_inception']:.2f}"]
    note = f"\n\n\\* {FID_NOTE}; IS is exp(mean KL) over the same classifier's softmax."
    return _table(header, [row]) + note


def probe_table(name: str, r: dict) -> str:
    """One row: | tokenizer | train images | test images | steps | accuracy |."""
    header = ["tokenizer", "train images", "test images", "L-BFGS steps", "linear-probe accuracy"]
    row = [name, str(r["num_train"]), str(r["num_test"]), str(r["steps"]), f"{r['accuracy']:.4f}"]
    return _table(header, [row])


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    """The command line of ``main``."""
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="TiTok checkpoint folder")
    p.add_argument("--generator", help="generator checkpoint folder (needs --classifier)")
    p.add_argument("--classifier", help="FMNIST classifier folder: rFID, gFID, IS and class accuracy")
    p.add_argument("--judge", help="an independent classifier folder (another seed/width): class kept by it too")
    p.add_argument("--teacher", help="2D teacher checkpoint folder (MaskGIT-VQGAN or a 2D TiTok), reconstruction only")
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
    from .checkpoint import load_checkpoint
    from .classifier import load_classifier
    from .data import load_fashion_mnist

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
    classifier = load_classifier(args.classifier, args.device) if args.classifier else None
    judge = load_classifier(args.judge, args.device) if args.judge else None
    test_images, test_labels = load_fashion_mnist("test", limit=args.num_test)
    models = {"tokenizer": tokenizer}
    if args.teacher:
        models["teacher"] = load_checkpoint(args.teacher, args.device)

    bs = args.batch_size
    results: dict = {"args": vars(args), "fid_note": FID_NOTE, "reconstruction": {}}
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
            test_images,
            inception,
            judge,
        )
        samples = samples_per_class(gen["images"], gen["labels"])
        results["generation"] = {**jsonable(gen), "checkpoint": args.generator}
        tables.append(generation_table(Path(args.generator).name, results["generation"]))

    if args.probe_train > 0:
        train_images, train_labels = load_fashion_mnist("train", limit=args.probe_train)
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


if __name__ == "__main__":
    main()
