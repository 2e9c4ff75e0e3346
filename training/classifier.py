"""A small Fashion-MNIST CNN: the feature extractor for FID/IS and the perceptual loss; trains on CPU."""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]; floats keep their autograd graph."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    """3x3 conv (no bias: BatchNorm follows) + BatchNorm + ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FMNISTClassifier(nn.Module):
    """Three conv stages (32x32 -> 16 -> 8 -> 4) then a 256-d embedding and a 10-way linear head."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128), embed_dim: int = 256):
        super().__init__()
        self.widths = tuple(widths)  # saved in config.json: load_classifier rebuilds the same shape
        w1, w2, w3 = widths
        # the first stage is a single conv: it runs at full 32x32 resolution, where convs cost the most
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*_conv_bn(3, w1)),  # (B, w1, 32, 32)
                nn.Sequential(nn.MaxPool2d(2), *_conv_bn(w1, w2), *_conv_bn(w2, w2)),  # (B, w2, 16, 16)
                nn.Sequential(nn.MaxPool2d(2), *_conv_bn(w2, w3), *_conv_bn(w3, w3)),  # (B, w3, 8, 8)
            ]
        )
        self.embed = nn.Sequential(
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(w3 * 16, embed_dim), nn.BatchNorm1d(embed_dim), nn.ReLU()
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(embed_dim, num_classes)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each conv stage: [(B, 32, 32, 32), (B, 64, 16, 16), (B, 128, 8, 8)]."""
        h = (_unit(x) - 0.5) / 0.5  # (B, 3, 32, 32) in [-1, 1]
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (B, embed_dim), the FID feature."""
        return self.embed(self.feature_maps(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.dropout(self.features(x)))


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to `pad` pixels (zero padding, then a random crop) and random horizontal flips."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), black border like the data
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen)
    rows = (dy + torch.arange(h)).view(b, h, 1)  # (B, H, 1)
    cols = (dx + torch.arange(w)).view(b, 1, w)  # (B, 1, W)
    shifted = padded[torch.arange(b).view(b, 1, 1), :, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    flip = torch.rand(b, generator=gen) < 0.5
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
    gen = torch.Generator().manual_seed(seed)  # batches and augmentation
    model = FMNISTClassifier(widths=widths).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, min(100, steps // 10))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    n = len(images_uint8)
    order, pos = torch.randperm(n, generator=gen), 0
    model.train()
    for _ in range(steps):
        if pos + batch_size > n:  # new epoch: reshuffle; drop the ragged tail so BatchNorm sees full batches
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        x = _augment(_unit(images_uint8[idx]), gen).to(device)  # (B, 3, 32, 32)
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
    device = next(model.parameters()).device
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    return torch.cat([model(chunk.to(device)).cpu() for chunk in chunks])


def evaluate_accuracy(
    model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, batch_size: int = 512
) -> float:
    """Top-1 accuracy in [0, 1] over (images, labels)."""
    preds = predict_logits(model, images_uint8, batch_size).argmax(1)
    return (preds == labels.cpu()).float().mean().item()


# ---------------------------------------------------------------------------------------------------
# Checkpoints: model.safetensors + config.json, like the other models
# ---------------------------------------------------------------------------------------------------


def save_classifier(model: FMNISTClassifier, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write the classifier's weights (safetensors, no pickle) and a config.json with its metadata."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
    )
    doc = {"model": {"kind": "fmnist-classifier", "widths": list(model.widths)}, "metadata": metadata or {}}
    (folder / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    return folder


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> FMNISTClassifier:
    """Load a classifier written by ``save_classifier``; eval mode."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no classifier weights at {path}")
    config = Path(folder) / "config.json"
    widths = json.loads(config.read_text())["model"].get("widths") if config.is_file() else None
    model = FMNISTClassifier(widths=tuple(widths or (32, 64, 128)))  # older folders: the default widths
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> None:
    """`python -m training.classifier --out DIR --steps N`: train on Fashion-MNIST train, report test accuracy."""
    import argparse
    import time

    from .data import load_fashion_mnist

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default="checkpoints/fmnist-classifier")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--widths", default="32,64,128", help="channels of the three conv stages")
    args = parser.parse_args(argv)
    widths = tuple(int(w) for w in args.widths.split(","))
    x, y = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    start = time.time()
    model = train_classifier(x, y, steps=args.steps, batch_size=args.batch_size, seed=args.seed, widths=widths)
    acc = evaluate_accuracy(model, xt, yt)
    meta = {"test_accuracy": round(acc, 4), "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed}
    save_classifier(model, args.out, {**meta, "train_seconds": round(time.time() - start, 1)})
    print(f"| classifier | steps | test accuracy |\n|---|---|---|\n| {args.out} | {args.steps} | {acc:.4f} |")


if __name__ == "__main__":
    main()
