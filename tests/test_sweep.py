"""The sampling-settings sweep: one row per cell, and the best cell becomes the checkpoint's defaults."""

import json

from training.checkpoint import load_checkpoint, save_checkpoint
from training.models import FMNISTClassifier, GeneratorConfig, TiTokConfig, build_model
from training.sweep_sampling import choose, main


def test_sweep_writes_best_defaults(tmp_path):
    tok = TiTokConfig(
        image_size=32,
        patch_size=8,
        width=32,
        depth=1,
        heads=2,
        num_latent_tokens=8,
        codebook_size=32,
        decoder_head="pixel",
    )
    gen = GeneratorConfig(
        seq_len=8,
        codebook_size=32,
        num_classes=10,
        hidden=32,
        depth=1,
        heads=2,
        intermediate=64,
        num_steps=4,
        temperature=9.0,
        guidance_scale=7.0,
    )
    save_checkpoint(build_model(tok), tmp_path / "tok")
    save_checkpoint(build_model(gen), tmp_path / "gen")
    save_checkpoint(FMNISTClassifier().eval(), tmp_path / "clf")
    rows = main(
        [
            "--tokenizer",
            str(tmp_path / "tok"),
            "--generator",
            str(tmp_path / "gen"),
            "--classifier",
            str(tmp_path / "clf"),
            "--steps",
            "2",
            "--guidance",
            "0,1.5",
            "--temperature",
            "1",
            "--num-per-class",
            "2",
            "--num-test",
            "64",
            "--out",
            str(tmp_path / "rows.json"),
            "--write-defaults",
        ]
    )
    assert len(rows) == 2 and json.loads((tmp_path / "rows.json").read_text()) == rows
    best = choose(rows, 0.02)  # the default tolerance
    cfg = load_checkpoint(tmp_path / "gen").config
    assert (cfg.num_steps, cfg.guidance_scale, cfg.temperature) == (2, best["guidance_scale"], 1.0)


def test_best_cell_keeps_class_accuracy_within_the_tolerance():
    rows = [
        {"gfid": 13.9, "class_accuracy": 0.85},  # diverse but off-class: lowest gFID
        {"gfid": 14.2, "class_accuracy": 0.93},
        {"gfid": 14.5, "class_accuracy": 0.92},
    ]
    assert choose(rows, None) == rows[0]
    assert choose(rows, 0.02) == rows[1]
    assert choose(rows, 0.10) == rows[0]
