"""Running models over many images or token rows: batches, the device, eval mode, uint8 images."""

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


def batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of at most batch_size rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]


def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``fn`` over ``x`` batch by batch on ``device``; the outputs concatenated on the CPU."""
    return torch.cat([fn(batch.to(device)).cpu() for batch in batches(x, batch_size)])


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter."""
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
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


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, rounded to nearest, as a served PNG would hold them."""
    return (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
