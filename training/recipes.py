"""Training recipes: what is trained, on which data, with which loss. The loop itself is in ``train.py``.

tokenizer      single-stage TiTok (or the 2D-grid ablation) straight in pixel space; or fine-tunes one (init),
               optionally the decoder alone (freeze_encoder)
vqgan          the 2D MaskGIT-VQGAN teacher
proxy-stage1   two-stage TiTok, stage 1: predict the teacher's codes (computed once, cached)
proxy-stage2   two-stage TiTok, stage 2: encoder and quantizer frozen, decoder + pixel decoder in pixels
generator      the MaskGIT generator on token sequences cached from a tokenizer
"""

from dataclasses import fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import load_checkpoint
from .classifier import load_classifier
from .losses import (
    PatchDiscriminator,
    PerceptualLoss,
    arccos_mask,
    hinge_d_loss,
    hinge_g_loss,
    masked_token_loss,
)
from .models import MaskGITVQGAN, TiTok, build_model, get_config


@torch.no_grad()
def _batched(fn, x: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def _cached(path: Path, key: str, compute) -> torch.Tensor:
    """Compute a tensor once per run folder (teacher codes, generator tokens) and reuse it on resume."""
    if path.is_file():
        return load_file(str(path))[key]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous()}, str(path))
    return value


class Recipe:
    """Base: owns the model, the data tensors and the loss; optionally a discriminator."""

    name = ""

    def __init__(self, cfg, images: torch.Tensor, labels: torch.Tensor, device: torch.device, generator):
        self.cfg, self.device, self.gen = cfg, device, generator
        self.images, self.labels = images, labels
        self.model = self.build_model()
        self.disc: nn.Module | None = None
        self.perceptual: PerceptualLoss | None = None
        self._fake: torch.Tensor | None = None

    def build_model(self) -> nn.Module:
        return build_model(self.model_config())

    def model_config(self):
        """The preset named by ``model`` with ``model_overrides`` applied (and validated again)."""
        cfg = get_config(self.cfg.model)
        unknown = sorted(set(self.cfg.model_overrides or {}) - {f.name for f in fields(cfg)})
        if unknown:
            raise ValueError(f"model_overrides: {type(cfg).__name__} has no fields {unknown}")
        return replace(cfg, **(self.cfg.model_overrides or {}))

    def num_items(self) -> int:
        return len(self.images)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    # -- shared pixel-space losses (reconstruction, perceptual, adversarial) ------------------------

    def setup_pixel_losses(self):
        cfg = self.cfg
        if cfg.perceptual_weight > 0:
            if not cfg.perceptual_net:
                raise ValueError("perceptual_weight > 0 needs perceptual_net: a classifier checkpoint folder")
            self.perceptual = PerceptualLoss(load_classifier(cfg.perceptual_net)).to(self.device)
        if cfg.adversarial_weight > 0:
            self.disc = PatchDiscriminator().to(self.device)

    def pixel_loss(self, recon: torch.Tensor, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        l2 = F.mse_loss(recon, x)
        total, logs = l2, {"l2": l2.item()}
        if self.perceptual is not None:
            p = self.perceptual(recon, x)
            total = total + self.cfg.perceptual_weight * p
            logs["perceptual"] = p.item()
        if self.disc is not None and step >= self.cfg.adversarial_start:
            g = hinge_g_loss(self.disc(recon))
            total = total + self.cfg.adversarial_weight * g
            logs["gan_g"] = g.item()
        self._fake = recon.detach()
        return total, logs

    def discriminator_loss(self, idx: torch.Tensor, step: int) -> torch.Tensor | None:
        """Hinge loss on the real batch and the last reconstruction; None before ``adversarial_start``."""
        if self.disc is None or step < self.cfg.adversarial_start or self._fake is None:
            return None
        real = self.batch_images(idx)
        return hinge_d_loss(self.disc(real), self.disc(self._fake))

    def batch_images(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx].to(self.device).float() / 255.0  # (B, 3, H, W) in [0, 1]

    # -- codebook restarts ----------------------------------------------------------------------------

    def quantizer(self):
        """The codebook whose unused codes are restarted, if the recipe trains one."""
        return None

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (M, C) that unused codes move onto."""
        raise NotImplementedError


class _CodebookRecipe(Recipe):
    """Recipes that train a codebook: its usage is tracked and unused codes move onto encoder outputs."""

    def quantizer(self):
        return self.model.quantize

    def latents(self, x):
        z = self.model.encode_latents(x) if isinstance(self.model, TiTok) else self.model.encoder(x)  # (B, C, h, w)
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (M, C)


class _PixelRecipe(_CodebookRecipe):
    """Tokenizers trained end to end in pixel space: L2 (+ perceptual, + GAN) + quantizer loss."""

    def loss(self, idx, step):
        x = self.batch_images(idx)
        recon, info = self.model(x)
        total, logs = self.pixel_loss(recon, x, step)
        logs["quantizer"] = info["quantizer_loss"].item()
        return total + info["quantizer_loss"], {**logs, "indices": info["indices"]}


class TokenizerRecipe(_PixelRecipe):
    """Single-stage TiTok (and the 2D ablation); with ``init`` it fine-tunes a checkpoint, and with
    ``freeze_encoder`` only the decoder learns (the paper's decoder fine-tuning): the tokens of every image stay
    what they were, so they are computed once and a generator trained on them stays valid."""

    name = "tokenizer"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if not isinstance(self.model, TiTok) or self.model.config.decoder_head != "pixel":
            raise ValueError("recipe 'tokenizer' trains a TiTok with decoder_head 'pixel'")
        if self.cfg.freeze_encoder:
            self.model.freeze_encoder()
            model = self.model.to(self.device)
            self.tokens = _cached(
                Path(self.cfg.out) / "tokens.safetensors",
                "tokens",
                lambda: _batched(model.encode, self.images, self.device),
            )  # (num_items, N)
        self.setup_pixel_losses()

    def build_model(self):
        if not self.cfg.init:
            return super().build_model()
        if self.cfg.model_overrides:
            raise ValueError("model_overrides do not apply to an init checkpoint (its config is kept)")
        return load_checkpoint(self.cfg.init)

    def quantizer(self):
        return None if self.cfg.freeze_encoder else super().quantizer()  # a frozen codebook is not restarted

    def loss(self, idx, step):
        if not self.cfg.freeze_encoder:
            return super().loss(idx, step)
        zq = self.model.tokens_to_latents(self.tokens[idx].to(self.device))  # (B, C, 1, N)
        return self.pixel_loss(self.model.decode(zq), self.batch_images(idx), step)


class VQGANRecipe(_PixelRecipe):
    """The 2D MaskGIT-VQGAN teacher."""

    name = "vqgan"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if not isinstance(self.model, MaskGITVQGAN):
            raise ValueError("recipe 'vqgan' trains a MaskGIT-VQGAN preset")
        self.setup_pixel_losses()


class ProxyStage1Recipe(_CodebookRecipe):
    """Two-stage TiTok, stage 1: cross-entropy against the teacher's codes + quantizer loss."""

    name = "proxy-stage1"

    def model_config(self):
        if not self.cfg.teacher:
            raise ValueError("recipe 'proxy-stage1' needs teacher: a vqgan checkpoint folder")
        self.teacher = load_checkpoint(self.cfg.teacher)
        cfg = super().model_config()
        if cfg.decoder_head != "proxy":
            raise ValueError("recipe 'proxy-stage1' trains a TiTok with decoder_head 'proxy'")
        return replace(cfg, pixel_vqgan=self.teacher.config)  # the proxy head predicts the teacher's codes

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        teacher = self.teacher
        self.model.pixel_decoder.load_state_dict(teacher.decoder.state_dict())
        self.model.pixel_quantize.load_state_dict(teacher.quantize.state_dict())
        for m in (self.model.pixel_decoder, self.model.pixel_quantize):
            m.requires_grad_(False)
        teacher = teacher.to(self.device)
        self.codes = _cached(
            Path(self.cfg.out) / "teacher_codes.safetensors",
            "codes",
            lambda: _batched(teacher.encode, self.images, self.device),
        )  # (num_items, g*g)

    def loss(self, idx, step):
        x = self.batch_images(idx)
        logits, info = self.model(x)  # (B, K, g, g)
        ce = F.cross_entropy(logits.flatten(2), self.codes[idx].to(self.device))
        logs = {"ce": ce.item(), "quantizer": info["quantizer_loss"].item(), "indices": info["indices"]}
        return ce + info["quantizer_loss"], logs


class ProxyStage2Recipe(Recipe):
    """Two-stage TiTok, stage 2: frozen encoder/quantizer; decoder + pixel decoder trained in pixel space."""

    name = "proxy-stage2"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.model.freeze_encoder()
        self.model.pixel_quantize.requires_grad_(False)
        self.setup_pixel_losses()

    def build_model(self):
        if not self.cfg.init:
            raise ValueError("recipe 'proxy-stage2' needs init: the stage-1 checkpoint folder")
        return load_checkpoint(self.cfg.init)  # weights and config of stage 1

    def loss(self, idx, step):
        x = self.batch_images(idx)
        with torch.no_grad():
            zq, _, _ = self.model.quantize(self.model.encode_latents(x))
        return self.pixel_loss(self.model.decode(zq), x, step)


class GeneratorRecipe(Recipe):
    """MaskGIT on cached token sequences: arccos masking, class dropout, label smoothing."""

    name = "generator"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if not self.cfg.tokenizer:
            raise ValueError("recipe 'generator' needs tokenizer: the tokenizer checkpoint folder")
        tok = load_checkpoint(self.cfg.tokenizer).to(self.device)
        g = self.model.config
        if (tok.config.codebook_size, tok.config.num_tokens) != (g.codebook_size, g.seq_len):
            raise ValueError(
                f"tokenizer has {tok.config.num_tokens} tokens over {tok.config.codebook_size} codes but the "
                f"generator expects {g.seq_len} over {g.codebook_size}"
            )
        self.tokens = _cached(
            Path(self.cfg.out) / "tokens.safetensors", "tokens", lambda: _batched(tok.encode, self.images, self.device)
        )  # (num_items, N)

    def loss(self, idx, step):
        cfg, g = self.cfg, self.model.config
        tokens = self.tokens[idx].to(self.device)
        labels = self.labels[idx].to(self.device)
        drop = torch.rand(len(idx), generator=self.gen, device=self.device) < cfg.class_dropout
        labels = torch.where(drop, torch.full_like(labels, g.null_class_id), labels)
        inputs, mask = arccos_mask(tokens, g.mask_id, self.gen)
        logits = self.model(inputs, labels)  # (B, N, K)
        loss = masked_token_loss(logits, tokens, mask, cfg.label_smoothing, cfg.unmasked_weight)
        acc = (logits.argmax(-1) == tokens)[mask].float().mean()
        return loss, {"ce": loss.item(), "masked_acc": acc.item()}


RECIPES = {r.name: r for r in (TokenizerRecipe, VQGANRecipe, ProxyStage1Recipe, ProxyStage2Recipe, GeneratorRecipe)}
