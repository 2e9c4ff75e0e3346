"""Tests for training/metrics.py against values known in closed form."""

import numpy as np
import pytest
import torch

from training.metrics import (
    class_kept,
    codebook_usage,
    feature_stats,
    frechet_distance,
    inception_score,
    mae,
    mse,
    psnr,
    ssim,
)


@pytest.fixture
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=gen) * 0.9  # (B, 3, 32, 32) in [0, 0.9]


def test_psnr_identical_is_the_cap(images):
    assert psnr(images, images).tolist() == [100.0] * 4
    assert psnr(images, images, max_db=60.0).tolist() == [60.0] * 4


def test_psnr_of_known_mse(images):
    # a constant offset of 0.1 has MSE 0.01, i.e. 10 * log10(1 / 0.01) = 20 dB
    assert torch.allclose(psnr(images, images + 0.1), torch.full((4,), 20.0, dtype=torch.float64))
    scaled = psnr(images * 255, images * 255 + 25.5, data_range=255.0)
    assert torch.allclose(scaled, torch.full((4,), 20.0, dtype=torch.float64))


def test_mae_mse_per_image(images):
    shifted = images.clone()
    shifted[1] += 0.2
    assert torch.allclose(mae(images, shifted), torch.tensor([0.0, 0.2, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(mse(images, shifted), torch.tensor([0.0, 0.04, 0.0, 0.0], dtype=torch.float64))


def test_uint8_is_scaled_like_floats():
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (2, 3, 16, 16), generator=gen, dtype=torch.uint8)
    b = torch.randint(0, 256, (2, 3, 16, 16), generator=gen, dtype=torch.uint8)
    assert torch.allclose(psnr(a, b), psnr(a / 255.0, b / 255.0))
    assert torch.allclose(ssim(a, b), ssim(a / 255.0, b / 255.0))


def test_ssim_identical_is_one_and_falls_with_noise(images):
    assert torch.allclose(ssim(images, images), torch.ones(4, dtype=torch.float64), atol=1e-12)
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(images.shape, generator=gen)
    scores = [ssim(images, images + s * noise).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    assert torch.allclose(ssim(images, images + 0.1 * noise), ssim(images + 0.1 * noise, images))  # symmetric


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_fid_of_a_set_with_itself_and_shifted():
    feats = np.random.default_rng(0).normal(size=(400, 16))
    mu, sigma = feature_stats(feats)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (16, 16)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-6
    mu2, sigma2 = feature_stats(feats + 0.5)  # same covariance, mean moved by 0.5 on every axis
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(16 * 0.25, rel=1e-6)


def test_fid_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 2.0, 8), rng.uniform(0.1, 2.0, 8)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_fid_survives_singular_covariances():
    # fewer samples than dimensions: rank-deficient covariances
    feats = np.random.default_rng(2).normal(size=(6, 32))
    mu, sigma = feature_stats(feats)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-4
    mu0, sigma0 = np.zeros(4), np.zeros((4, 4))
    assert frechet_distance(mu0, sigma0, mu0 + 1.0, sigma0) == pytest.approx(4.0, abs=1e-4)


def test_inception_score_extremes():
    assert inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)
    one_hot = np.eye(10)[np.arange(100) % 10]  # confident and balanced over 10 classes
    assert inception_score(one_hot) == pytest.approx(10.0)
    assert inception_score(one_hot, splits=5) == pytest.approx(10.0)
    assert inception_score(np.eye(10)[np.zeros(20, int)]) == pytest.approx(1.0)  # confident but one class


def test_codebook_usage_on_known_indices():
    stats = codebook_usage(torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]]), codebook_size=8)
    assert stats["num_used"] == 4 and stats["used_fraction"] == 0.5
    assert stats["perplexity"] == pytest.approx(4.0)
    assert codebook_usage(np.array([5, 5, 5]), 8)["perplexity"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="indices"):
        codebook_usage(torch.tensor([8]), 8)


def test_class_kept_counts_hits_on_both_sides_and_agreement():
    labels = np.array([0, 1, 2, 1])
    real = np.eye(3)[[0, 1, 2, 2]]  # right, right, right, wrong
    recon = np.eye(3)[[0, 2, 2, 2]]  # right, wrong, right, wrong (the same wrong answer as on the original)
    assert class_kept(real, recon, torch.tensor(labels)) == {
        "accuracy_original": 0.75,
        "accuracy_reconstructed": 0.5,
        "agreement": 0.75,
    }
    with pytest.raises(ValueError, match="logits"):
        class_kept(real, recon[:3], labels)
