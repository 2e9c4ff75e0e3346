"""Training recipes: what is trained, on which data, with which loss. The loop itself is in ``train.py``.

tokenizer      single-stage TiTok (or the 2D-grid ablation) straight in pixel space
vqgan          the 2D MaskGIT-VQGAN teacher
proxy-stage1   two-stage TiTok, stage 1: predict the teacher's codes (computed once, cached)
proxy-stage2   two-stage TiTok, stage 2: encoder and quantizer frozen, decoder + pixel decoder in pixels
generator      the MaskGIT generator on token sequences cached from a tokenizer

Each recipe is a plain function ``(RunInputs) -> Run``: it loads what it depends on (teacher, stage-1
checkpoint, tokenizer) explicitly, builds the model, and composes the loss from small parts (``PixelLosses`` for
reconstruction in pixels, ``Codebook`` for code restarts). The order of the random draws (model init, then
networks loaded or built for the losses) is the order of the lines, so seeded runs are reproducible.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import load_checkpoint
from .inference import map_batches
from .losses import (
    ClassKeptLoss,
    PatchDiscriminator,
    PerceptualLoss,
    arccos_mask,
    hinge_d_loss,
    hinge_g_loss,
    masked_token_loss,
)
from .models import MaskGITVQGAN, ModelConfig, TiTok, build_model, check_pair, deepen_decoder, get_config, strict_fields
from .models.blocks import to_unit_float
from .models.quantizer import VectorQuantizer

LossFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, dict]]  # (batch indices, step) -> (loss, logs)


@dataclass
class RunInputs:
    """What every recipe starts from: the settings, the whole data set in memory, the device and the random stream
    of the recipe's own draws (masks, class dropout, code restarts)."""

    cfg: object  # train.TrainConfig
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    device: torch.device
    rng: torch.Generator

    def batch_images(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at ``idx`` on the device, float (B, 3, H, W) in [0, 1]."""
        return to_unit_float(self.images[idx].to(self.device))


@dataclass
class Codebook:
    """A codebook the run trains: its usage is counted and unused codes move onto encoder outputs."""

    quantizer: VectorQuantizer
    latents: Callable[[torch.Tensor], torch.Tensor]  # batch indices -> the batch's encoder outputs (M, C)


class PixelLosses:
    """Reconstruction in pixel space: L2, + perceptual (a classifier's features), + class kept (the classifier's
    predictions against the original's, or against the label), + hinge GAN after a start step."""

    def __init__(self, inputs: RunInputs):
        cfg = inputs.cfg
        self.cfg, self.inputs = cfg, inputs
        self.perceptual: PerceptualLoss | None = None
        self.disc: nn.Module | None = None
        self._fake: torch.Tensor | None = None
        self.class_kept: ClassKeptLoss | None = None
        if cfg.perceptual_weight > 0 or cfg.class_weight > 0 or cfg.label_weight > 0:
            if not cfg.perceptual_net:
                raise ValueError(
                    "perceptual_weight, class_weight or label_weight > 0 needs perceptual_net: a classifier folder"
                )
            classifier = load_checkpoint(cfg.perceptual_net, kind="fmnist-classifier").to(inputs.device)
            if cfg.perceptual_weight > 0:
                self.perceptual = PerceptualLoss(classifier)
            if cfg.class_weight > 0 or cfg.label_weight > 0:
                self.class_kept = ClassKeptLoss(classifier)
        if cfg.adversarial_weight > 0:
            self.disc = PatchDiscriminator().to(inputs.device)

    def __call__(self, recon: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """The generator-side loss of a reconstruction ``recon`` of ``x``, the images at ``idx`` (their labels for
        ``label_weight``); remembers ``recon`` for the discriminator."""
        l2 = F.mse_loss(recon, x)
        total, logs = l2, {"l2": l2.item()}
        if self.perceptual is not None:
            p = self.perceptual(recon, x)
            total = total + self.cfg.perceptual_weight * p
            logs["perceptual"] = p.item()
        if self.class_kept is not None and self.cfg.class_weight > 0:
            c = self.class_kept(recon, x)
            total = total + self.cfg.class_weight * c
            logs["class_kl"] = c.item()
        if self.class_kept is not None and self.cfg.label_weight > 0:
            ce = self.class_kept.label_loss(recon, self.inputs.labels[idx].to(recon.device))
            total = total + self.cfg.label_weight * ce
            logs["label_ce"] = ce.item()
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
        return hinge_d_loss(self.disc(self.inputs.batch_images(idx)), self.disc(self._fake))


@dataclass
class Run:
    """What the loop needs from a recipe."""

    model: nn.Module
    loss: LossFn
    num_items: int
    pixel: PixelLosses | None = None  # its discriminator (if any) trains beside the model
    codebook: Codebook | None = None

    @property
    def disc(self) -> nn.Module | None:
        return self.pixel.disc if self.pixel is not None else None

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------------


def model_config(cfg) -> ModelConfig:
    """The preset named by ``model`` with ``model_overrides`` applied (and validated again)."""
    preset = get_config(cfg.model)
    overrides = strict_fields(type(preset), cfg.model_overrides or {}, f"model_overrides of {type(preset).__name__}")
    return replace(preset, **overrides)


def _cached(path: Path, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Compute a tensor once per run folder (teacher codes, generator tokens) and reuse it on resume."""
    if path.is_file():
        return load_file(str(path))[key]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous()}, str(path))
    return value


@torch.no_grad()
def _encode_all(encode: Callable[[torch.Tensor], torch.Tensor], inputs: RunInputs) -> torch.Tensor:
    """Token or code ids of every image, (N, T) on the CPU."""
    return map_batches(encode, inputs.images, 256, inputs.device)


def _codebook(model: nn.Module, inputs: RunInputs) -> Codebook:
    """The model's own codebook; TiTok's encoder outputs (B, C, 1, N), the VQGAN's (B, C, h, w)."""

    def latents(idx: torch.Tensor) -> torch.Tensor:
        x = inputs.batch_images(idx)
        z = model.encode_latents(x) if isinstance(model, TiTok) else model.encoder(x)  # (B, C, h, w)
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (M, C)

    return Codebook(model.quantize, latents)


def _pixel_run(model: nn.Module, inputs: RunInputs) -> Run:
    """A tokenizer trained end to end in pixels: pixel losses + the quantizer's loss, codes restarted."""
    pixel = PixelLosses(inputs)

    def loss(idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        x = inputs.batch_images(idx)
        recon, info = model(x)
        total, logs = pixel(recon, x, idx, step)
        logs["quantizer"] = info["quantizer_loss"].item()
        return total + info["quantizer_loss"], {**logs, "indices": info["indices"]}

    return Run(model, loss, len(inputs.images), pixel=pixel, codebook=_codebook(model, inputs))


# ---------------------------------------------------------------------------------------------------
# The recipes
# ---------------------------------------------------------------------------------------------------


def tokenizer_recipe(inputs: RunInputs) -> Run:
    """Single-stage TiTok (and the 2D ablation). With ``init`` it fine-tunes a checkpoint; with ``freeze_encoder``
    only the decoder learns (the paper's decoder fine-tuning): every image keeps its tokens, so they are computed
    once, and a generator trained on them stays valid. ``model_overrides={decoder_depth: N}`` with ``init`` grows
    the decoder (``deepen_decoder``); no other override applies to an init checkpoint."""
    cfg = inputs.cfg
    grow = dict(cfg.model_overrides or {}) if cfg.init else {}
    decoder_depth = grow.pop("decoder_depth", None)
    if grow:
        raise ValueError(
            "of model_overrides, only decoder_depth applies to an init checkpoint (its decoder grows new blocks); "
            f"the rest of its config is kept, so {sorted(grow)} cannot be changed"
        )
    model = load_checkpoint(cfg.init) if cfg.init else build_model(model_config(cfg))
    if not isinstance(model, TiTok) or model.config.decoder_head != "pixel":
        raise ValueError("recipe 'tokenizer' trains a TiTok with decoder_head 'pixel'")
    if decoder_depth is not None:
        model = deepen_decoder(model, decoder_depth)
    if not cfg.freeze_encoder:
        return _pixel_run(model, inputs)
    model.freeze_encoder()
    tokens = _cached(
        Path(cfg.out) / "tokens.safetensors", "tokens", lambda: _encode_all(model.to(inputs.device).encode, inputs)
    )  # (N, T)
    pixel = PixelLosses(inputs)

    def loss(idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        zq = model.tokens_to_latents(tokens[idx].to(inputs.device))  # (B, C, 1, N)
        return pixel(model.decode(zq), inputs.batch_images(idx), idx, step)

    return Run(model, loss, len(inputs.images), pixel=pixel)  # a frozen codebook is not restarted


def vqgan_recipe(inputs: RunInputs) -> Run:
    """The 2D MaskGIT-VQGAN teacher."""
    model = build_model(model_config(inputs.cfg))
    if not isinstance(model, MaskGITVQGAN):
        raise ValueError("recipe 'vqgan' trains a MaskGIT-VQGAN preset")
    return _pixel_run(model, inputs)


def proxy_stage1_recipe(inputs: RunInputs) -> Run:
    """Two-stage TiTok, stage 1: cross-entropy against the teacher's codes + quantizer loss."""
    cfg = inputs.cfg
    if not cfg.teacher:
        raise ValueError("recipe 'proxy-stage1' needs teacher: a vqgan checkpoint folder")
    teacher = load_checkpoint(cfg.teacher, kind="vqgan")
    student = model_config(cfg)
    if student.decoder_head != "proxy":
        raise ValueError("recipe 'proxy-stage1' trains a TiTok with decoder_head 'proxy'")
    model = build_model(replace(student, pixel_vqgan=teacher.config))  # the proxy head predicts the teacher's codes
    model.pixel_decoder.load_state_dict(teacher.decoder.state_dict())
    model.pixel_quantize.load_state_dict(teacher.quantize.state_dict())
    for m in (model.pixel_decoder, model.pixel_quantize):
        m.requires_grad_(False)
    teacher = teacher.to(inputs.device)
    codes = _cached(
        Path(cfg.out) / "teacher_codes.safetensors", "codes", lambda: _encode_all(teacher.encode, inputs)
    )  # (N, g*g)

    def loss(idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        x = inputs.batch_images(idx)
        logits, info = model(x)  # (B, K, g, g)
        ce = F.cross_entropy(logits.flatten(2), codes[idx].to(inputs.device))
        logs = {"ce": ce.item(), "quantizer": info["quantizer_loss"].item(), "indices": info["indices"]}
        return ce + info["quantizer_loss"], logs

    return Run(model, loss, len(inputs.images), codebook=_codebook(model, inputs))


def proxy_stage2_recipe(inputs: RunInputs) -> Run:
    """Two-stage TiTok, stage 2: frozen encoder/quantizer; decoder + pixel decoder trained in pixel space."""
    if not inputs.cfg.init:
        raise ValueError("recipe 'proxy-stage2' needs init: the stage-1 checkpoint folder")
    model = load_checkpoint(inputs.cfg.init)  # weights and config of stage 1
    model.freeze_encoder()
    model.pixel_quantize.requires_grad_(False)
    pixel = PixelLosses(inputs)

    def loss(idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        x = inputs.batch_images(idx)
        with torch.no_grad():
            zq, _, _ = model.quantize(model.encode_latents(x))
        return pixel(model.decode(zq), x, idx, step)

    return Run(model, loss, len(inputs.images), pixel=pixel)


def generator_recipe(inputs: RunInputs) -> Run:
    """MaskGIT on cached token sequences: arccos masking, class dropout, label smoothing. With ``init`` it
    fine-tunes a generator checkpoint (e.g. after the tokenizer was fine-tuned and many tokens kept their ids)."""
    cfg, device, rng = inputs.cfg, inputs.device, inputs.rng
    if cfg.init and cfg.model_overrides:
        raise ValueError("model_overrides do not apply to an init checkpoint (its config is kept)")
    model = load_checkpoint(cfg.init, kind="generator") if cfg.init else build_model(model_config(cfg))
    if not cfg.tokenizer:
        raise ValueError("recipe 'generator' needs tokenizer: the tokenizer checkpoint folder")
    tokenizer = load_checkpoint(cfg.tokenizer).to(device)
    check_pair(tokenizer.config, model.config)
    tokens = _cached(
        Path(cfg.out) / "tokens.safetensors", "tokens", lambda: _encode_all(tokenizer.encode, inputs)
    )  # (N, T)
    g = model.config

    def loss(idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        targets = tokens[idx].to(device)
        labels = inputs.labels[idx].to(device)
        drop = torch.rand(len(idx), generator=rng, device=device) < cfg.class_dropout
        labels = torch.where(drop, torch.full_like(labels, g.null_class_id), labels)
        masked, mask = arccos_mask(targets, g.mask_id, rng)
        logits = model(masked, labels)  # (B, N, K)
        ce = masked_token_loss(logits, targets, mask, cfg.label_smoothing, cfg.unmasked_weight)
        acc = (logits.argmax(-1) == targets)[mask].float().mean()
        return ce, {"ce": ce.item(), "masked_acc": acc.item()}

    return Run(model, loss, len(inputs.images))


RECIPES: dict[str, Callable[[RunInputs], Run]] = {
    "tokenizer": tokenizer_recipe,
    "vqgan": vqgan_recipe,
    "proxy-stage1": proxy_stage1_recipe,
    "proxy-stage2": proxy_stage2_recipe,
    "generator": generator_recipe,
}


def build_run(inputs: RunInputs) -> Run:
    """The run of ``inputs.cfg.recipe``."""
    return RECIPES[inputs.cfg.recipe](inputs)
