"""training/token_probe.py: the first-k and swap constructions, and a run on a tiny tokenizer and real test images."""

import json

import pytest
import torch
from PIL import Image

from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import load_fashion_mnist
from training.evaluation import decode, reconstruct
from training.metrics import psnr
from training.models import TiTokConfig, build_model
from training.token_probe import first_k, main, swapped

TITOK = TiTokConfig(
    image_size=32, patch_size=8, width=32, depth=1, heads=2, num_latent_tokens=8, codebook_size=32, decoder_head="pixel"
)


def test_first_k_keeps_the_first_k_and_fills_the_rest():
    ids = torch.arange(16).reshape(2, 8)
    out = first_k(ids, 3, filler=31)
    assert out[:, :3].tolist() == ids[:, :3].tolist() and (out[:, 3:] == 31).all()
    assert torch.equal(first_k(ids, 8, 31), ids) and (first_k(ids, 0, 5) == 5).all()


def test_swapped_changes_exactly_one_position_per_row():
    a, b = torch.arange(8), torch.arange(100, 108)
    rows = swapped(a, b)
    assert rows.shape == (8, 8)
    assert ((rows != a).sum(dim=1) == 1).all() and torch.equal(rows.diagonal(), b)


def test_run_writes_pictures_and_a_consistent_table(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(build_model(TITOK), tmp_path / "tok")
    args = ["--tokenizer", str(tmp_path / "tok"), "--out-dir", str(tmp_path), "--num-test", "40"]
    result = main(args + ["--num-pairs", "4", "--num-shown", "2", "--swaps-shown", "3", "--scale", "2"])
    psnr_by_k = result["psnr_first_k"]
    assert list(psnr_by_k) == [0, 1, 2, 4, 8]
    # k = 8 keeps every token: the tokenizer's own reconstruction; k = 0 decodes the filler alone
    tokenizer = load_checkpoint(tmp_path / "tok").eval()
    images, _ = load_fashion_mnist("test", limit=40)
    tokens, recon = reconstruct(tokenizer, images)
    filler = torch.full_like(tokens, result["filler_token"])
    real = images.float() / 255
    assert psnr_by_k[8] == pytest.approx(float(psnr(recon.float() / 255, real).mean()), rel=1e-6)
    assert psnr_by_k[0] == pytest.approx(float(psnr(decode(tokenizer, filler).float() / 255, real).mean()), rel=1e-6)
    assert result["filler_token"] == int(torch.bincount(tokens.flatten()).argmax())
    assert len(result["swap_mean_abs_change_by_position"]) == 8
    assert json.loads((tmp_path / "tokens.json").read_text())["filler_token"] == result["filler_token"]
    # 2 images x (original + 5 values of k), cells of 64 px with 1 px gaps
    assert Image.open(tmp_path / "tokens-first-k.png").size == (6 * 65 - 1, 2 * 65 - 1)
    assert Image.open(tmp_path / "tokens-swap.png").size == (5 * 65 - 1, 2 * 65 - 1)
