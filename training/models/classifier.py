"""A small Fashion-MNIST CNN: the feature extractor for FID/IS and the perceptual loss; trains on CPU."""

import torch
from torch import nn

from .blocks import to_unit_float
from .config import ClassifierConfig


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    """3x3 conv (no bias: BatchNorm follows) + BatchNorm + ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FMNISTClassifier(nn.Module):
    """Three conv stages (32x32 -> 16 -> 8 -> 4) then an embedding and a linear head over the classes."""

    def __init__(self, cfg: ClassifierConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or ClassifierConfig()
        w1, w2, w3 = cfg.widths
        # the first stage is a single conv: it runs at full 32x32 resolution, where convs cost the most
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*_conv_bn(3, w1)),  # (B, w1, 32, 32)
                nn.Sequential(nn.MaxPool2d(2), *_conv_bn(w1, w2), *_conv_bn(w2, w2)),  # (B, w2, 16, 16)
                nn.Sequential(nn.MaxPool2d(2), *_conv_bn(w2, w3), *_conv_bn(w3, w3)),  # (B, w3, 8, 8)
            ]
        )
        self.embed = nn.Sequential(
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(w3 * 16, cfg.embed_dim), nn.BatchNorm1d(cfg.embed_dim), nn.ReLU()
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each conv stage: [(B, 32, 32, 32), (B, 64, 16, 16), (B, 128, 8, 8)]."""
        h = (to_unit_float(x) - 0.5) / 0.5  # (B, 3, 32, 32) in [-1, 1]
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
