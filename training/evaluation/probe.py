"""The linear probe: how linearly separable the classes are in a tokenizer's quantized token vectors."""

import torch
from torch import nn

from ..inference import batches, device_of, eval_mode
from ..models import TiTok
from ..report import markdown_table


@torch.no_grad()  # not inference_mode: the features feed an autograd graph afterwards
def token_features(tokenizer: TiTok, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The quantized token vectors of each image, flattened: float32 (B, N*C) on the CPU."""
    device = device_of(tokenizer)
    feats = []
    with eval_mode(tokenizer):
        for batch in batches(images, batch_size):
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
    rng = torch.Generator().manual_seed(seed)
    probe = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.copy_(0.01 * torch.randn(probe.weight.shape, generator=rng))
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


def probe_table(name: str, r: dict) -> str:
    """One row: | tokenizer | train images | test images | steps | accuracy |."""
    header = ["tokenizer", "train images", "test images", "L-BFGS steps", "linear-probe accuracy"]
    row = [name, str(r["num_train"]), str(r["num_test"]), str(r["steps"]), f"{r['accuracy']:.4f}"]
    return markdown_table(header, [row])
