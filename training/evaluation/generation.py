"""Generation: samples per class from the served MaskGIT sampler, decoded, scored by gFID, IS and class accuracy.

The sampler is ``titok_core.sampler`` (version 2, the numpy reference of the gateway's step graph, on the PyTorch
generator's logits): what we measure is what we serve.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from titok_core.sampler import SAMPLER_VERSION, SamplingSettings, generate

from ..inference import device_of, eval_mode
from ..metrics import codebook_usage, inception_score
from ..models import check_pair
from ..report import markdown_table
from .features import FID_NOTE, FeatureFn, classify, extract, fid_from_features, softmax
from .reconstruction import decode


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
    device = device_of(generator)

    def logits_fn(tokens: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = generator(torch.from_numpy(tokens).to(device), torch.from_numpy(class_ids).to(device))
        return logits.float().cpu().numpy()

    return logits_fn


def evaluate_generation(
    generator: nn.Module,
    tokenizer: nn.Module,
    classifier: nn.Module,
    num_per_class: int,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 250,
    *,
    real_images: torch.Tensor,
    inception: FeatureFn | None = None,
    judge: nn.Module | None = None,
) -> dict:
    """num_per_class samples per class, decoded: gFID (against ``real_images``), IS, class accuracy (also by an
    independent ``judge`` classifier when given), images, labels."""
    if num_per_class < 1:
        raise ValueError(f"num_per_class must be >= 1, not {num_per_class}")
    check_pair(tokenizer.config, generator.config)
    cfg = generator.config
    settings = default_settings(generator) if settings is None else settings
    labels = torch.arange(cfg.num_classes).repeat_interleave(num_per_class)  # (M,), class-major
    seeds = [seed + k for k in range(len(labels))]  # item k uses seed + k: all distinct, reproducible alone
    with eval_mode(generator):  # dropout off: the sampler needs deterministic logits
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
    feats, logits = classify(classifier, images, batch_size)
    if logits.shape[1] != cfg.num_classes:
        raise ValueError(f"classifier has {logits.shape[1]} classes, generator {cfg.num_classes}")
    hits = logits.argmax(axis=1) == labels.numpy()
    out = {
        "num_images": len(images),
        "num_per_class": num_per_class,
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "sampler": SAMPLER_VERSION,  # the served sampler's version: seeded samples differ between versions
        "gfid": fid_from_features(classify(classifier, real_images, batch_size)[0], feats),
        "inception_score": inception_score(softmax(logits)),
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


def samples_per_class(images: torch.Tensor, labels: torch.Tensor, per_class: int = 10) -> torch.Tensor:
    """The first per_class images of each class, class by class (one grid row each)."""
    classes = torch.unique(labels)
    keep = min(per_class, min(int((labels == c).sum()) for c in classes))  # rows of equal length
    return torch.cat([images[labels == c][:keep] for c in classes])


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
    return markdown_table(header, [row]) + note
