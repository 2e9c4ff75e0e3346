"""Tests for training/evaluation/ with tiny random models, an untrained classifier and real Fashion-MNIST images."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from titok_core.sampler import SamplingSettings, generate
from training.checkpoint import save_checkpoint
from training.data import load_fashion_mnist
from training.evaluation import (
    FID_NOTE,
    classify,
    decode,
    evaluate_generation,
    evaluate_reconstruction,
    fid_from_features,
    jsonable,
    linear_probe,
    reconstruct,
    reconstruction_metrics,
)
from training.evaluation.cli import main
from training.evaluation.probe import token_features
from training.models import ClassifierConfig, FMNISTClassifier, GeneratorConfig, TiTokConfig, VQGANConfig, build_model
from training.report import save_grid

TITOK = TiTokConfig(
    image_size=32, patch_size=8, width=32, depth=1, heads=2, num_latent_tokens=8, codebook_size=32, decoder_head="pixel"
)
GENERATOR = GeneratorConfig(
    arch="bert", seq_len=8, codebook_size=32, num_classes=10, hidden=32, depth=1, heads=2, intermediate=64, num_steps=4
)
VQGAN = VQGANConfig(image_size=32, hidden=32, channel_mult=(1, 1, 1), num_res_blocks=1, z_channels=8, codebook_size=16)
SETTINGS = SamplingSettings(num_steps=4, guidance_scale=2.0, guidance_schedule="linear", temperature=3.0)


def _seeded(config):
    torch.manual_seed(0)
    return build_model(config)  # train mode, as built: evaluation must switch modes itself


@pytest.fixture(scope="module")
def data():
    images, labels = load_fashion_mnist("test", limit=64)
    return images, labels


@pytest.fixture(scope="module")
def tokenizer():
    return _seeded(TITOK)


@pytest.fixture(scope="module")
def generator():
    return _seeded(GENERATOR)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return FMNISTClassifier().eval()


# ---------------------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------------------


def test_reconstruction_keys_and_ranges(tokenizer, classifier, data):
    images, _ = data
    r = evaluate_reconstruction(tokenizer, images, classifier, batch_size=24)  # ragged last batch
    assert r["num_images"] == 64 and r["num_tokens"] == 8 and r["codebook_size"] == 32
    assert np.isfinite(r["psnr"]) and -1.0 <= r["ssim"] <= 1.0
    assert 0.0 <= r["mae"] <= 1.0 and 0.0 <= r["mse"] <= 1.0
    assert 0.0 < r["codebook_usage"]["used_fraction"] <= 1.0 and r["codebook_usage"]["perplexity"] >= 1.0
    assert np.isfinite(r["rfid"]) and r["rfid"] >= 0.0
    assert "rfid" not in evaluate_reconstruction(tokenizer, images[:8])  # no classifier, no rFID
    assert tokenizer.training  # its mode is restored


def test_reconstruction_is_batch_independent(tokenizer, data):
    images, _ = data
    tokens, recon = reconstruct(tokenizer, images[:16], batch_size=16)
    tokens_small, recon_small = reconstruct(tokenizer, images[:16], batch_size=5)
    assert recon.dtype == torch.uint8 and recon.shape == (16, 3, 32, 32) and tokens.shape == (16, 8)
    torch.testing.assert_close(tokens, tokens_small, rtol=0, atol=0)
    assert (recon.int() - recon_small.int()).abs().max() <= 1  # float rounding may flip a uint8 step


def test_reconstruction_of_the_2d_teacher(data):
    images, _ = data
    r = evaluate_reconstruction(_seeded(VQGAN), images[:8])
    assert r["num_tokens"] == 8 * 8 and r["codebook_size"] == 16 and "VQGAN" in r["model"]
    assert np.isfinite(r["psnr"]) and 0.0 < r["codebook_usage"]["used_fraction"] <= 1.0


def test_a_perfect_reconstruction_scores_perfectly(tokenizer, classifier, data):
    images, _ = data
    tokens, _ = reconstruct(tokenizer, images)
    r = reconstruction_metrics(images, images.clone(), tokens, 32, classifier)
    assert r["psnr"] == 100.0 and r["ssim"] == pytest.approx(1.0) and r["mae"] == 0.0
    assert r["rfid"] == pytest.approx(0.0, abs=1e-6)
    feats, _ = classify(classifier, images)
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(feats, feats + 1.0) == pytest.approx(feats.shape[1], rel=1e-6)  # |mean shift|^2


def test_class_kept_by_the_classifier_and_an_independent_judge(tokenizer, classifier, data):
    images, labels = data
    torch.manual_seed(1)
    judge = FMNISTClassifier(ClassifierConfig(widths=(8, 16, 32))).eval()
    r = evaluate_reconstruction(tokenizer, images, classifier, batch_size=24, labels=labels, judge=judge)
    for key in ("class_kept", "class_kept_judge"):
        assert set(r[key]) == {"accuracy_original", "accuracy_reconstructed", "agreement"}
        assert all(0.0 <= v <= 1.0 for v in r[key].values())
    assert r["class_kept"] != r["class_kept_judge"]  # two different networks
    tokens, _ = reconstruct(tokenizer, images)
    perfect = reconstruction_metrics(images, images.clone(), tokens, 32, classifier, labels=labels, judge=judge)
    for key in ("class_kept", "class_kept_judge"):
        k = perfect[key]
        assert k["agreement"] == 1.0 and k["accuracy_reconstructed"] == k["accuracy_original"]
    assert "class_kept" not in evaluate_reconstruction(tokenizer, images[:8], classifier)  # no labels, no class kept


def test_reconstruction_rejects_a_non_tokenizer(data, generator):
    with pytest.raises(TypeError, match="not a tokenizer"):
        reconstruct(generator, data[0][:2])


# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------


def test_generation_is_deterministic_and_uses_the_service_sampler(generator, tokenizer, classifier, data):
    images, _ = data
    run = dict(num_per_class=2, settings=SETTINGS, real_images=images, batch_size=7)
    first = evaluate_generation(generator, tokenizer, classifier, seed=3, **run)
    again = evaluate_generation(generator, tokenizer, classifier, seed=3, **run)
    other = evaluate_generation(generator, tokenizer, classifier, seed=4, **run)
    assert first["images"].dtype == torch.uint8 and first["images"].shape == (20, 3, 32, 32)
    assert first["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    torch.testing.assert_close(first["images"], again["images"], rtol=0, atol=0)
    assert first["gfid"] == again["gfid"] and not torch.equal(first["images"], other["images"])
    assert np.isfinite(first["gfid"]) and first["gfid"] >= 0.0
    assert 1.0 <= first["inception_score"] <= 10.0 and 0.0 <= first["class_accuracy"] <= 1.0
    assert first["settings"]["guidance_scale"] == 2.0 and len(first["per_class_accuracy"]) == 10
    assert first["sampler"] == 2  # the served sampler's version, recorded with the figures
    assert generator.training  # its mode is restored

    # the images are exactly the service sampler's tokens (item k: seed 3 + k), decoded
    generator.eval()
    try:

        def logits_fn(tokens, class_ids):
            with torch.no_grad():
                return generator(torch.from_numpy(tokens), torch.from_numpy(class_ids)).numpy()

        classes = first["labels"].tolist()
        dims = dict(seq_len=8, codebook_size=32, num_classes=10)
        tokens = generate(logits_fn, classes, [3 + k for k in range(20)], settings=SETTINGS, **dims)
    finally:
        generator.train()
    torch.testing.assert_close(decode(tokenizer, torch.from_numpy(tokens)), first["images"], rtol=0, atol=0)
    json.dumps(jsonable(first))  # the rest is JSON-ready


def test_generation_defaults_to_the_generators_settings(generator, tokenizer, classifier, data):
    r = evaluate_generation(generator, tokenizer, classifier, 1, real_images=data[0][:16])
    assert r["settings"] == {
        "num_steps": 4,
        "guidance_scale": GENERATOR.guidance_scale,
        "guidance_schedule": GENERATOR.guidance_schedule,
        "temperature": GENERATOR.temperature,
        "softmax_annealing": False,
    }


def test_generation_rejects_a_tokenizer_of_another_language(generator, classifier, data):
    other = _seeded(TiTokConfig(**{**vars(TITOK), "num_latent_tokens": 4}))
    with pytest.raises(ValueError, match="generator expects 8 tokens"):
        evaluate_generation(generator, other, classifier, 1, real_images=data[0])


# ---------------------------------------------------------------------------------------------------
# Linear probe and grids
# ---------------------------------------------------------------------------------------------------


def test_linear_probe_is_an_accuracy_and_deterministic(tokenizer, data):
    images, labels = data
    args = (tokenizer, images[:48], labels[:48], images[48:], labels[48:])
    acc = linear_probe(*args, steps=30)
    assert linear_probe(*args, steps=30) == acc
    # this untrained tokenizer gives every image the same tokens, so all a probe can learn is the training set's
    # class frequencies: it predicts one of the most frequent training classes for every test image
    assert len(token_features(tokenizer, images).unique(dim=0)) == 1
    counts = torch.bincount(labels[:48])
    most = torch.nonzero(counts == counts.max()).flatten().tolist()
    assert acc in {float((labels[48:] == c).float().mean()) for c in most}


def test_save_grid_writes_a_png_of_the_expected_size(tmp_path, data):
    images, _ = data
    path = save_grid(images[:23], tmp_path / "sub" / "grid.png", nrow=10)  # 3 rows, the last one short
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (10 * 33 - 1, 3 * 33 - 1)
        assert img.getpixel((32, 0)) == (255, 255, 255)  # a gap
        assert img.getpixel((33 + 16, 16)) == tuple(images[1, :, 16, 16].tolist())  # 2nd image's centre
    with pytest.raises(ValueError, match="uint8"):
        save_grid(images.float(), tmp_path / "bad.png", nrow=4)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def test_main_end_to_end(tmp_path, tokenizer, generator, classifier, capsys):
    save_checkpoint(tokenizer, tmp_path / "tok")
    save_checkpoint(generator, tmp_path / "gen")
    save_checkpoint(_seeded(VQGAN), tmp_path / "teacher")
    save_checkpoint(classifier, tmp_path / "cls")
    out, grids = tmp_path / "results" / "eval.json", tmp_path / "docs"
    argv = ["--tokenizer", str(tmp_path / "tok"), "--generator", str(tmp_path / "gen")]
    argv += [
        "--classifier",
        str(tmp_path / "cls"),
        "--teacher",
        str(tmp_path / "teacher"),
        "--judge",
        str(tmp_path / "cls"),
    ]
    argv += ["--num-test", "32", "--num-per-class", "2", "--probe-train", "64", "--probe-steps", "10"]
    argv += ["--guidance-scale", "1.5", "--out", str(out), "--grid-dir", str(grids)]
    main(argv)

    printed = capsys.readouterr().out
    assert FID_NOTE in printed and "| tokenizer (TiTok 1D" in printed and "| teacher" in printed
    assert "class kept*" in printed and "class kept (judge)" in printed and "class acc. (judge)" in printed
    doc = json.loads(out.read_text())
    assert set(doc["reconstruction"]) == {"tokenizer", "teacher"}
    assert doc["reconstruction"]["tokenizer"]["num_images"] == 32 and "rfid" in doc["reconstruction"]["teacher"]
    kept = doc["reconstruction"]["tokenizer"]["class_kept"]
    assert kept == doc["reconstruction"]["tokenizer"]["class_kept_judge"]  # the judge is the same network here
    assert doc["generation"]["class_accuracy_judge"] == doc["generation"]["class_accuracy"]
    assert doc["generation"]["num_images"] == 20 and doc["generation"]["settings"]["guidance_scale"] == 1.5
    assert "images" not in doc["generation"] and 0.0 <= doc["linear_probe"]["accuracy"] <= 1.0
    with Image.open(grids / "reconstructions.png") as img:
        assert img.size == (16 * 33 - 1, 3 * 33 - 1)  # originals, tokenizer, teacher
    with Image.open(grids / "samples.png") as img:
        assert img.size == (2 * 33 - 1, 10 * 33 - 1)  # one row per class, 2 samples each


@pytest.mark.skipif(importlib.util.find_spec("pytorch_fid") is not None, reason="pytorch-fid is installed here")
def test_main_says_what_inception_needs(tmp_path, tokenizer):
    save_checkpoint(tokenizer, tmp_path / "tok")
    with pytest.raises(SystemExit, match="pytorch-fid"):
        main(["--tokenizer", str(tmp_path / "tok"), "--inception", str(tmp_path / "missing.pth")])
