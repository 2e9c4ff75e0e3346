"""Classifier features and logits of many images, and the Frechet distance between two feature sets."""

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..inference import batches, device_of, eval_mode
from ..metrics import feature_stats, frechet_distance

FID_NOTE = "FID over the features of the Fashion-MNIST classifier trained in this repository (not Inception)"

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (B, 3, H, W) -> features (B, D)


@torch.inference_mode()
def extract(fn: FeatureFn, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Run a feature function over images in batches -> float64 (N, D) on the CPU."""
    return torch.cat([fn(batch).flatten(1).double().cpu() for batch in batches(images, batch_size)]).numpy()


@torch.inference_mode()
def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Classifier features (N, D) and logits (N, K), float64, from one pass per batch in eval mode."""
    device = device_of(classifier)
    feats, logits = [], []
    with eval_mode(classifier):
        for batch in batches(images, batch_size):
            f = classifier.features(batch.to(device))
            feats.append(f.double().cpu())
            logits.append(classifier.head(f).double().cpu())  # == forward(x) in eval mode (dropout is off)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N, D) and (M, D)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, K)."""
    z = logits - logits.max(axis=1, keepdims=True)  # shift: no overflow
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
