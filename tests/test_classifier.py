"""Tests for training/classifier.py: shapes, input contract and a tiny real training run."""

import pytest
import torch

from training.checkpoint import load_checkpoint, save_checkpoint
from training.classifier import evaluate_accuracy, train_classifier
from training.data import load_fashion_mnist
from training.models import ClassifierConfig, FMNISTClassifier


@pytest.fixture(scope="module")
def trained():
    """50 steps on 512 real training images; returns (model, per-step losses)."""
    images, labels = load_fashion_mnist("train", limit=512)
    losses: list[float] = []
    model = train_classifier(images, labels, steps=50, batch_size=32, lr=3e-3, seed=0, history=losses)
    return model, losses


@pytest.mark.slow
def test_tiny_training_run_learns(trained):
    model, losses = trained
    assert len(losses) == 50
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    images, labels = load_fashion_mnist("test", limit=512)
    assert evaluate_accuracy(model, images, labels) > 0.4  # chance is 0.1


@pytest.mark.slow
def test_shapes_and_input_contract(trained):
    model, _ = trained
    images, _ = load_fashion_mnist("test", limit=6)
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (6, 10)
        assert torch.allclose(model(images.float() / 255.0), logits)  # uint8 and [0, 1] floats agree
        assert model.features(images).shape == (6, 256)
        maps = model.feature_maps(images)
    assert [tuple(m.shape) for m in maps] == [(6, 32, 32, 32), (6, 64, 16, 16), (6, 128, 8, 8)]


@pytest.mark.slow
def test_perceptual_gradients_reach_the_input(trained):
    model, _ = trained
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    sum(m.pow(2).mean() for m in model.feature_maps(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_size_and_determinism():
    assert 300_000 <= sum(p.numel() for p in FMNISTClassifier().parameters()) <= 1_000_000
    images, labels = load_fashion_mnist("train", limit=64)
    a = train_classifier(images, labels, steps=2, batch_size=16, lr=1e-3, seed=3)
    b = train_classifier(images, labels, steps=2, batch_size=16, lr=1e-3, seed=3)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)


def test_common_checkpoint_format_round_trips(trained, tmp_path):
    model, _ = trained
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "clf"), kind="fmnist-classifier")
    images, _ = load_fashion_mnist("test", limit=8)
    assert loaded.config == ClassifierConfig() and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_the_shipped_classifier_loads_and_classifies():
    model = load_checkpoint("checkpoints/fmnist-classifier", kind="fmnist-classifier")
    images, labels = load_fashion_mnist("test", limit=200)
    assert evaluate_accuracy(model, images, labels) > 0.85  # 92.9% on the whole test set


def test_a_judge_of_another_width_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    judge = FMNISTClassifier(ClassifierConfig(widths=(8, 16, 24))).eval()
    loaded = load_checkpoint(save_checkpoint(judge, tmp_path / "judge"), kind="fmnist-classifier")
    assert loaded.config.widths == (8, 16, 24)
    images, _ = load_fashion_mnist("test", limit=4)
    with torch.no_grad():
        assert torch.equal(loaded(images), judge(images))
