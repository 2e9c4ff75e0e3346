"""Reconstruction and generation metrics: PSNR, SSIM, MAE/MSE, codebook usage, FID, Inception Score, class kept.

Per-image metrics take float tensors (B, C, H, W) in [0, 1] (uint8 is accepted and scaled by 1/255) and return
float64 tensors (B,). Everything is deterministic and accumulates in float64.
"""

import warnings

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from .models.blocks import to_unit_float


def _pair64(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and convert both images to float64 in [0, 1] (uint8 is divided by 255)."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"need two (B, C, H, W) tensors of one shape: {tuple(a.shape)}, {tuple(b.shape)}")
    return to_unit_float(a, torch.float64), to_unit_float(b, torch.float64)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, (B,)."""
    a, b = _pair64(a, b)
    return (a - b).pow(2).flatten(1).mean(1)


def mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image, (B,)."""
    a, b = _pair64(a, b)
    return (a - b).abs().flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, max_db: float = 100.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, (B,); capped at max_db so identical images are finite."""
    err = mse(a, b)
    db = 10.0 * torch.log10(data_range**2 / err.clamp_min(1e-300))  # clamp: no division by zero
    return torch.where(err > 0, db.clamp_max(max_db), torch.full_like(db, max_db))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian, float64 (size,)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, (B,): Gaussian window 11 / sigma 1.5, K1=0.01, K2=0.03, per channel.

    Only the "valid" region (window fully inside the image, no padding) is averaged, as in Wang et al.'s
    reference code, so borders are not biased by padded zeros; a 32x32 image gives 22x22 values per channel.
    """
    a, b = _pair64(a, b)
    channels, win = a.shape[1], 11
    if min(a.shape[-2:]) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win}, got {tuple(a.shape[-2:])}")
    g = _gaussian_window(win, 1.5)
    kh = g.view(1, 1, win, 1).repeat(channels, 1, 1, 1)  # (C, 1, 11, 1): separable, depthwise
    kw = g.view(1, 1, 1, win).repeat(channels, 1, 1, 1)  # (C, 1, 1, 11)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kh, groups=channels), kw, groups=channels)  # (B, C, H-10, W-10)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(1)


def codebook_usage(indices: torch.Tensor | np.ndarray, codebook_size: int) -> dict:
    """How many codes are used and how evenly: {used_fraction, perplexity, num_used} over all indices."""
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    idx = np.asarray(indices).reshape(-1).astype(np.int64)
    if idx.size == 0:
        return {"used_fraction": 0.0, "perplexity": 0.0, "num_used": 0}
    if idx.min() < 0 or idx.max() >= codebook_size:
        raise ValueError(f"indices must lie in [0, {codebook_size}), got [{idx.min()}, {idx.max()}]")
    counts = np.bincount(idx, minlength=codebook_size).astype(np.float64)
    p = counts[counts > 0] / idx.size
    num_used = int((counts > 0).sum())
    # perplexity = exp(entropy): the number of equally used codes that would give the same entropy
    return {
        "used_fraction": num_used / codebook_size,
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
        "num_used": num_used,
    }


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), float64, as used by the Frechet distance."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm(m: np.ndarray, max_rel_err: float = np.inf) -> np.ndarray | None:
    """scipy's matrix square root; None if it fails, is not finite or misses max_rel_err (singular input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular input; we check the result ourselves
        try:
            root = scipy.linalg.sqrtm(m)
        except (np.linalg.LinAlgError, ValueError):
            return None
    if not np.all(np.isfinite(root)):
        return None
    scale = max(np.linalg.norm(m), 1e-300)
    return root if np.linalg.norm(root @ root - m) / scale <= max_rel_err else None


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(s1 + s2 - 2 sqrt(s1 s2))."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    covmean = _sqrtm(s1 @ s2, max_rel_err=1e-6)
    if covmean is None:
        # singular product (e.g. fewer samples than dimensions): nudge both covariances off singularity
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
        if covmean is None:
            raise ValueError("Frechet distance: sqrtm of the covariance product failed, even with eps offset")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            imag = np.abs(covmean.imag).max()
            raise ValueError(f"Frechet distance: sqrtm has a large imaginary part ({imag:.3g})")
        covmean = covmean.real  # rounding noise from the Schur decomposition
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return float(max(fid, 0.0))  # a squared distance; rounding can dip just below zero


def inception_score(probs: np.ndarray, splits: int = 1) -> float:
    """exp(mean KL(p(y|x) || p(y))) over probs (N, K), averaged over `splits` consecutive chunks."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits or splits < 1:
        raise ValueError(f"need probs (N >= splits, K) and splits >= 1, got {p.shape} and splits={splits}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)  # (1, K) marginal
        safe = np.where(part > 0, part, 1.0)  # 0 * log 0 = 0
        kl = (part * (np.log(safe) - np.log(np.where(py > 0, py, 1.0)))).sum(axis=1)  # (n,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def class_kept(real_logits: np.ndarray, recon_logits: np.ndarray, labels: np.ndarray | torch.Tensor) -> dict:
    """How much of the class survives a reconstruction, by one classifier's logits (N, K) on originals and
    reconstructions: its top-1 accuracy on each, and how often its prediction is unchanged (agreement)."""
    real, recon = np.asarray(real_logits), np.asarray(recon_logits)
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if real.shape != recon.shape or real.ndim != 2 or y.shape != (len(real),) or len(y) == 0:
        raise ValueError(f"need logits (N >= 1, K) twice and labels (N,): {real.shape}, {recon.shape}, {y.shape}")
    p_real, p_recon = real.argmax(axis=1), recon.argmax(axis=1)
    return {
        "accuracy_original": float((p_real == y).mean()),
        "accuracy_reconstructed": float((p_recon == y).mean()),
        "agreement": float((p_real == p_recon).mean()),
    }
