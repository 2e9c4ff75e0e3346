"""Reconstruction: encode and decode test images with a tokenizer, then PSNR/SSIM/MAE/MSE, codebook usage, rFID."""

from collections.abc import Callable

import torch
from torch import nn

from ..inference import batches, device_of, eval_mode, to_uint8
from ..metrics import class_kept, codebook_usage, mae, mse, psnr, ssim
from ..models import MaskGITVQGAN, TiTok
from ..report import fmt, markdown_table
from .features import FID_NOTE, FeatureFn, classify, extract, fid_from_features

PER_IMAGE_METRICS = {"psnr": psnr, "ssim": ssim, "mae": mae, "mse": mse}


def codec(tokenizer: nn.Module) -> tuple[Callable, Callable]:
    """(encode, decode) of a TiTok tokenizer or a MaskGIT-VQGAN: images -> ids (B, N) -> images in [0, 1]."""
    if isinstance(tokenizer, TiTok):
        return tokenizer.encode, tokenizer.decode_tokens
    if isinstance(tokenizer, MaskGITVQGAN):
        return tokenizer.encode, tokenizer.decode_codes
    raise TypeError(f"not a tokenizer: {type(tokenizer).__name__} (want TiTok or MaskGITVQGAN)")


def describe(model: nn.Module) -> str:
    """A short human name for tables: "TiTok 1D, 32 tokens, pixel head", "MaskGIT-VQGAN 2D, 8x8 codes", ..."""
    cfg = model.config
    if isinstance(model, MaskGITVQGAN):
        return f"MaskGIT-VQGAN 2D, {cfg.grid_size}x{cfg.grid_size} codes"
    if isinstance(model, TiTok):
        layout = f"2D grid {cfg.grid_size}x{cfg.grid_size}" if cfg.grid_tokens else "1D"
        return f"TiTok {layout}, {cfg.num_tokens} tokens, {cfg.decoder_head} head"
    return type(model).__name__


def structure(tokenizer: nn.Module) -> dict:
    """What comparisons group by, as fields (not prose): kind, layout ("1D"/"2D"), num_tokens, recipe.

    recipe is "two-stage" for a TiTok with the proxy head (trained on a teacher's codes, then in pixels) and
    "single-stage" for everything trained straight in pixel space.
    """
    codec(tokenizer)  # type check
    cfg = tokenizer.config
    two_d = isinstance(tokenizer, MaskGITVQGAN) or cfg.grid_tokens
    two_stage = isinstance(tokenizer, TiTok) and cfg.decoder_head == "proxy"
    return {
        "kind": cfg.kind,
        "layout": "2D" if two_d else "1D",
        "num_tokens": cfg.num_tokens,
        "recipe": "two-stage" if two_stage else "single-stage",
    }


@torch.inference_mode()
def reconstruct(tokenizer: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode + decode in batches: (tokens int64 (N, T), reconstructions uint8 (N, 3, H, W)), on the CPU."""
    if len(images) == 0:
        raise ValueError("no images to reconstruct")
    encode, decode_ids = codec(tokenizer)
    device = device_of(tokenizer)
    tokens, recons = [], []
    with eval_mode(tokenizer):
        for batch in batches(images, batch_size):
            ids = encode(batch.to(device))  # (B, T)
            tokens.append(ids.cpu())
            recons.append(to_uint8(decode_ids(ids)).cpu())  # (B, 3, H, W)
    return torch.cat(tokens), torch.cat(recons)


@torch.inference_mode()
def decode(tokenizer: nn.Module, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Token ids (M, N) -> uint8 images (M, 3, H, W) on the CPU, in batches."""
    _, decode_ids = codec(tokenizer)
    device = device_of(tokenizer)
    with eval_mode(tokenizer):
        return torch.cat([to_uint8(decode_ids(batch.to(device))).cpu() for batch in batches(tokens, batch_size)])


def reconstruction_metrics(
    real: torch.Tensor,
    recon: torch.Tensor,
    tokens: torch.Tensor,
    codebook_size: int,
    classifier: nn.Module | None = None,
    inception: FeatureFn | None = None,
    batch_size: int = 256,
    labels: torch.Tensor | None = None,
    judge: nn.Module | None = None,
) -> dict:
    """Mean PSNR/SSIM/MAE/MSE ([0, 1] scale), codebook usage, and rFID when a classifier (or Inception) is given.

    With labels, also class kept (``metrics.class_kept``) by the classifier and by an independent ``judge``
    classifier: the perceptual loss trains on the first one's features, so it is not an unbiased witness.
    """
    per_image = {name: [] for name in PER_IMAGE_METRICS}
    for a, b in zip(batches(real, batch_size), batches(recon, batch_size), strict=True):
        for name, fn in PER_IMAGE_METRICS.items():
            per_image[name].append(fn(a, b))  # batched: SSIM in float64 is memory-hungry
    out = {name: float(torch.cat(values).mean()) for name, values in per_image.items()}
    out["codebook_usage"] = codebook_usage(tokens, codebook_size)
    if classifier is not None:
        (real_feats, real_logits), (recon_feats, recon_logits) = (
            classify(classifier, x, batch_size) for x in (real, recon)
        )
        out["rfid"] = fid_from_features(real_feats, recon_feats)
        if labels is not None:
            out["class_kept"] = class_kept(real_logits, recon_logits, labels)
    if judge is not None and labels is not None:
        out["class_kept_judge"] = class_kept(
            classify(judge, real, batch_size)[1], classify(judge, recon, batch_size)[1], labels
        )
    if inception is not None:
        out["rfid_inception"] = fid_from_features(extract(inception, real, 64), extract(inception, recon, 64))
    return out


def evaluate_reconstruction(
    tokenizer: nn.Module,
    images_uint8: torch.Tensor,
    classifier: nn.Module | None = None,
    batch_size: int = 256,
    inception: FeatureFn | None = None,
    labels: torch.Tensor | None = None,
    judge: nn.Module | None = None,
) -> dict:
    """Reconstruct the images with a TiTok or a MaskGIT-VQGAN and report the metrics of reconstruction_metrics."""
    tokens, recon = reconstruct(tokenizer, images_uint8, batch_size)
    metrics = reconstruction_metrics(
        images_uint8, recon, tokens, tokenizer.config.codebook_size, classifier, inception, batch_size, labels, judge
    )
    info = {"model": describe(tokenizer), **structure(tokenizer), "num_images": len(images_uint8)}
    return {**info, "codebook_size": tokenizer.config.codebook_size, **metrics}


def _kept(r: dict, key: str) -> str:
    """Class kept as "reconstructions% (originals%)", or a dash."""
    k = r.get(key)
    return "—" if k is None else f"{k['accuracy_reconstructed']:.1%} ({k['accuracy_original']:.1%})"


def reconstruction_table(results: dict[str, dict]) -> str:
    """One row per model: tokens, codebook, PSNR, SSIM, MAE, MSE, codebook usage, rFID, class kept (by the
    classifier and by the judge, when measured) and Inception rFID."""
    header = ["model", "tokens", "codebook", "PSNR (dB)", "SSIM", "MAE", "MSE", "codes used", "perplexity", "rFID*"]
    inception = any("rfid_inception" in r for r in results.values())
    kept = [k for k in ("class_kept", "class_kept_judge") if any(k in r for r in results.values())]
    rows = []
    for name, r in results.items():
        use = r["codebook_usage"]
        rows.append(
            [
                f"{name} ({r['model']})",
                str(r["num_tokens"]),
                str(r["codebook_size"]),
                f"{r['psnr']:.2f}",
                f"{r['ssim']:.4f}",
                f"{r['mae']:.4f}",
                f"{r['mse']:.5f}",
                f"{use['used_fraction']:.3f}",
                f"{use['perplexity']:.1f}",
                fmt(r.get("rfid"), ".3f"),
            ]
            + [_kept(r, k) for k in kept]
            + ([fmt(r.get("rfid_inception"), ".2f")] if inception else [])
        )
    header += [{"class_kept": "class kept*", "class_kept_judge": "class kept (judge)"}[k] for k in kept]
    header += ["Inception rFID"] if inception else []
    note = f"\n\n\\* {FID_NOTE}. MAE and MSE on the [0, 1] scale."
    if kept:
        note += " Class kept: the classifier's accuracy on the reconstructions (on the originals)."
    return markdown_table(header, rows) + note
