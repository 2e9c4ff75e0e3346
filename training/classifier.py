"""Training the Fashion-MNIST classifier (``training.models.FMNISTClassifier``): the FID/IS features and the
perceptual loss. ``python -m training classifier --out DIR --steps N`` trains it and reports test accuracy."""

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import save_checkpoint
from .inference import device_of, map_batches
from .models import ClassifierConfig, FMNISTClassifier
from .models.blocks import to_unit_float
from .report import markdown_table


def _augment(x: torch.Tensor, rng: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to `pad` pixels (zero padding, then a random crop) and random horizontal flips."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), black border like the data
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=rng)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=rng)
    rows = (dy + torch.arange(h)).view(b, h, 1)  # (B, H, 1)
    cols = (dx + torch.arange(w)).view(b, 1, w)  # (B, 1, W)
    shifted = padded[torch.arange(b).view(b, 1, 1), :, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    flip = torch.rand(b, generator=rng) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), shifted.flip(3), shifted)


def train_classifier(
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    history: list[float] | None = None,
    widths: tuple[int, int, int] = (32, 64, 128),
) -> FMNISTClassifier:
    """Train an FMNISTClassifier (AdamW, warmup + cosine, shift/flip augmentation); returned in eval mode.

    Per-step training losses are appended to `history` when a list is given.
    """
    torch.manual_seed(seed)  # weight init
    rng = torch.Generator().manual_seed(seed)  # batches and augmentation
    model = FMNISTClassifier(ClassifierConfig(widths=widths)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, min(100, steps // 10))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    n = len(images_uint8)
    order, pos = torch.randperm(n, generator=rng), 0
    model.train()
    for _ in range(steps):
        if pos + batch_size > n:  # new epoch: reshuffle; drop the ragged tail so BatchNorm sees full batches
            order, pos = torch.randperm(n, generator=rng), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        x = _augment(to_unit_float(images_uint8[idx]), rng).to(device)  # (B, 3, 32, 32)
        loss = F.cross_entropy(model(x), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if history is not None:
            history.append(loss.item())
    return model.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits (N, num_classes) in eval mode, batched; images uint8 or float [0, 1], any device."""
    model.eval()
    return map_batches(model, images, batch_size, device_of(model))


def evaluate_accuracy(
    model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, batch_size: int = 512
) -> float:
    """Top-1 accuracy in [0, 1] over (images, labels)."""
    preds = predict_logits(model, images_uint8, batch_size).argmax(1)
    return (preds == labels.cpu()).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    """Train on Fashion-MNIST train, report test accuracy, write a checkpoint (safetensors + config.json)."""
    from .data import FASHION_MNIST_CLASSES, load_fashion_mnist

    parser = argparse.ArgumentParser(prog="python -m training classifier", description=main.__doc__)
    parser.add_argument("--out", default="checkpoints/fmnist-classifier")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--widths", default="32,64,128", help="channels of the three conv stages (a judge: others)")
    args = parser.parse_args(argv)
    widths = tuple(int(w) for w in args.widths.split(","))
    x, y = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    start = time.time()
    model = train_classifier(x, y, steps=args.steps, batch_size=args.batch_size, seed=args.seed, widths=widths)
    acc = evaluate_accuracy(model, xt, yt)
    meta = {"test_accuracy": round(acc, 4), "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed}
    meta |= {"train_seconds": round(time.time() - start, 1), "class_names": list(FASHION_MNIST_CLASSES)}
    save_checkpoint(model, args.out, meta)
    print(markdown_table(["classifier", "steps", "test accuracy"], [[args.out, str(args.steps), f"{acc:.4f}"]]))
