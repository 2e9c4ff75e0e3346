"""The models: TiTok (1D and the 2D ablation), the MaskGIT-VQGAN and the MaskGIT generators.

``build_model("titok-l-32")`` or ``build_model(TiTokConfig(...))`` gives the module; the call surface:
  tokenizer.encode(images) -> ids (B, N);  tokenizer.decode_tokens(ids) -> images (B, 3, H, W) in [0, 1];
  generator(ids, class_ids) -> logits (B, N, K);  vqgan.encode(images) -> codes (B, h*w);
  classifier(images) -> logits (B, C), classifier.features(images) -> (B, D).
"""

import copy

from torch import nn

from .classifier import FMNISTClassifier
from .config import (
    ClassifierConfig,
    GeneratorConfig,
    ModelConfig,
    TiTokConfig,
    VQGANConfig,
    check_pair,
    config_from_dict,
    config_to_dict,
    strict_fields,
)
from .generator import MaskGITBert, MaskGITUViT
from .maskgit_vqgan import MaskGITVQGAN
from .presets import PRESETS
from .titok import TiTok, deepen_decoder

__all__ = [
    "PRESETS",
    "ClassifierConfig",
    "FMNISTClassifier",
    "GeneratorConfig",
    "MaskGITBert",
    "MaskGITUViT",
    "MaskGITVQGAN",
    "ModelConfig",
    "TiTok",
    "TiTokConfig",
    "VQGANConfig",
    "build_model",
    "check_pair",
    "config_from_dict",
    "config_to_dict",
    "deepen_decoder",
    "get_config",
    "strict_fields",
]


def get_config(preset: str) -> ModelConfig:
    """A fresh copy of a named preset's config."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[preset])


def build_model(preset_or_config: str | ModelConfig) -> nn.Module:
    """Build a model from a preset name or a config (use ``with torch.device("meta")`` to skip allocation)."""
    cfg = get_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    if isinstance(cfg, TiTokConfig):
        return TiTok(cfg)
    if isinstance(cfg, VQGANConfig):
        return MaskGITVQGAN(cfg)
    if isinstance(cfg, GeneratorConfig):
        return MaskGITBert(cfg) if cfg.arch == "bert" else MaskGITUViT(cfg)
    if isinstance(cfg, ClassifierConfig):
        return FMNISTClassifier(cfg)
    raise TypeError(f"not a model config: {type(cfg).__name__}")
