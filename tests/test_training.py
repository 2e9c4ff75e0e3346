"""Training recipes on tiny configs and a few hundred real images: checkpoints, exact resume, data parallelism."""

import csv
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from training.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from training.models import FMNISTClassifier, TiTokConfig, deepen_decoder
from training.train import load_config, lr_factor, train

ROOT = Path(__file__).resolve().parents[1]
TINY_TITOK = {"width": 32, "depth": 1, "heads": 2, "codebook_size": 64}
COMMON = ["data_limit=256", "batch_size=16", "progress=false", "log_every=1", "warmup_steps=2", "threads=1"]


def run(tmp: Path, name: str, *settings: str, config: str | None = None) -> dict:
    cfg = load_config(config, [f"out={tmp / name}", *COMMON, *settings])
    return train(cfg)


def losses(folder: Path) -> list[str]:
    with (folder / "metrics.csv").open() as f:
        return [row["loss"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each recipe for a few steps, chained as in the real pipeline (teacher -> stage 1 -> stage 2 -> generator)."""
    tmp = tmp_path_factory.mktemp("runs")
    tiny = f"model_overrides={TINY_TITOK}".replace(" ", "")
    save_checkpoint(FMNISTClassifier().eval(), tmp / "classifier")  # an untrained one is enough for the plumbing
    run(
        tmp,
        "tokenizer",
        "recipe=tokenizer",
        "model=titok-fmnist-32",
        tiny,
        "steps=4",
        "codebook_restart_every=2",
        "perceptual_weight=0.1",
        "class_weight=0.1",
        f"perceptual_net={tmp / 'classifier'}",
    )
    run(
        tmp,
        "vqgan",
        "recipe=vqgan",
        "model=vqgan-fmnist",
        "steps=3",
        "adversarial_weight=0.1",
        "model_overrides={hidden: 32, codebook_size: 32, z_channels: 16}",
    )
    run(
        tmp,
        "stage1",
        "recipe=proxy-stage1",
        "model=titok-fmnist-32-proxy",
        tiny,
        "steps=3",
        f"teacher={tmp / 'vqgan/checkpoint'}",
    )
    run(
        tmp,
        "decoder-ft",
        "recipe=tokenizer",
        f"init={tmp / 'tokenizer/checkpoint'}",
        "freeze_encoder=true",
        "steps=3",
        "perceptual_weight=0.1",
        "label_weight=0.1",
        f"perceptual_net={tmp / 'classifier'}",
    )
    run(tmp, "stage2", "recipe=proxy-stage2", "steps=3", f"init={tmp / 'stage1/checkpoint'}", "adversarial_weight=0.1")
    run(
        tmp,
        "generator",
        "recipe=generator",
        "model=generator-fmnist",
        "steps=3",
        f"tokenizer={tmp / 'tokenizer/checkpoint'}",
        "model_overrides={hidden: 32, depth: 1, heads: 2, intermediate: 64, codebook_size: 64}",
    )
    return tmp


@pytest.mark.parametrize("name", ["tokenizer", "decoder-ft", "vqgan", "stage1", "stage2", "generator"])
def test_each_recipe_writes_a_checkpoint_that_loads(runs, name):
    model = load_checkpoint(runs / name / "checkpoint")
    assert not model.training
    rows = losses(runs / name)
    assert len(rows) >= 3 and all(torch.isfinite(torch.tensor(float(v))) for v in rows)
    assert (runs / name / "state.pt").is_file()
    _, metadata = read_checkpoint_config(runs / name / "checkpoint")
    assert metadata["class_names"] == list(FASHION_MNIST_CLASSES)  # what export names the classes


def test_proxy_stages_share_the_teacher(runs):
    teacher = load_checkpoint(runs / "vqgan/checkpoint")
    stage1 = load_checkpoint(runs / "stage1/checkpoint")
    stage2 = load_checkpoint(runs / "stage2/checkpoint")
    assert stage1.config.pixel_vqgan == teacher.config
    # stage 1 keeps the teacher's decoder frozen; stage 2 keeps stage 1's encoder frozen and tunes the decoder
    assert torch.equal(stage1.pixel_decoder.conv_out.weight, teacher.decoder.conv_out.weight)
    assert torch.equal(stage2.encoder.conv_out.weight, stage1.encoder.conv_out.weight)
    assert torch.equal(stage2.quantize.embedding.weight, stage1.quantize.embedding.weight)
    assert not torch.equal(stage2.pixel_decoder.conv_out.weight, stage1.pixel_decoder.conv_out.weight)


def test_decoder_fine_tuning_keeps_every_token(runs):
    """init + freeze_encoder: the decoder moves, the encoder, latent tokens and codebook do not, so each image keeps
    its tokens (and a generator trained on them stays valid)."""
    base = load_checkpoint(runs / "tokenizer/checkpoint")
    tuned = load_checkpoint(runs / "decoder-ft/checkpoint")
    a, b = base.state_dict(), tuned.state_dict()
    frozen = [k for k in a if not k.startswith("decoder.")]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    cached = load_file(str(runs / "decoder-ft/tokens.safetensors"))["tokens"]
    images = load_fashion_mnist("train", limit=len(cached))[0][:32]
    assert torch.equal(tuned.encode(images), base.encode(images))
    assert torch.equal(cached[:32], base.encode(images))


def test_decoder_fine_tuning_resumes_exactly(tmp_path, runs):
    extra = ["recipe=tokenizer", f"init={runs / 'tokenizer/checkpoint'}", "freeze_encoder=true", "steps=4"]
    run(tmp_path, "straight", *extra, "ckpt_every=2")
    run(tmp_path, "resumed", *extra, "ckpt_every=2", "stop_at=2")
    run(tmp_path, "resumed", *extra, "ckpt_every=2")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_a_grown_decoder_starts_where_its_init_decodes_and_keeps_every_token(tmp_path, runs):
    """init + model_overrides={decoder_depth: N}: new decoder blocks start as the identity (the grown model decodes
    exactly as its init did), training moves them, the tokens stay, and a stopped run resumes exactly."""
    base = load_checkpoint(runs / "tokenizer/checkpoint")
    assert base.config.decoder_depth is None and len(base.decoder.transformer) == base.config.depth == 1
    grown = deepen_decoder(base, 3).eval()
    ids = torch.randint(0, base.config.codebook_size, (4, base.config.num_tokens))
    assert torch.equal(grown.decode_tokens(ids), base.decode_tokens(ids))

    extra = ["recipe=tokenizer", f"init={runs / 'tokenizer/checkpoint'}", "freeze_encoder=true", "steps=4"]
    extra += ["model_overrides={decoder_depth: 3}", "ckpt_every=2"]
    run(tmp_path, "straight", *extra)
    run(tmp_path, "resumed", *extra, "stop_at=2")
    run(tmp_path, "resumed", *extra)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    tuned = load_checkpoint(tmp_path / "straight/checkpoint")
    assert tuned.config.decoder_depth == 3 and len(tuned.decoder.transformer) == 3
    assert len(tuned.encoder.transformer) == 1
    new_proj = tuned.decoder.transformer[2].mlp.c_proj.weight
    assert new_proj.abs().sum() > 0  # the new blocks learned
    images = load_fashion_mnist("train", limit=32)[0]
    assert torch.equal(tuned.encode(images), base.encode(images))


def test_a_decoder_does_not_shrink(tmp_path, runs):
    extra = ["recipe=tokenizer", f"init={runs / 'tokenizer/checkpoint'}", "freeze_encoder=true", "steps=1"]
    with pytest.raises(ValueError, match="would drop blocks"):
        run(tmp_path, "shallower", *extra, "model_overrides={decoder_depth: 0}")
    with pytest.raises(ValueError, match="decoder_depth must be at least 1"):
        TiTokConfig(decoder_depth=0)


def test_pixel_losses_are_logged(runs):
    with (runs / "tokenizer" / "metrics.csv").open() as f:
        row = next(csv.DictReader(f))
        assert {"l2", "perceptual", "class_kl", "quantizer"} <= set(row)
        assert float(row["class_kl"]) >= 0  # a KL divergence
    with (runs / "decoder-ft" / "metrics.csv").open() as f:
        row = next(csv.DictReader(f))
        assert "class_kl" not in row and 0 < float(row["label_ce"]) < 2 * math.log(10)  # untrained: near ln 10
    with (runs / "vqgan" / "metrics.csv").open() as f:
        assert {"gan_g", "gan_d"} <= set(next(csv.DictReader(f)))


def test_generator_tokens_are_cached_once(runs):
    assert (runs / "generator" / "tokens.safetensors").is_file()
    assert (runs / "stage1" / "teacher_codes.safetensors").is_file()


@pytest.mark.parametrize(
    "recipe",
    [
        ["recipe=tokenizer", "model=titok-fmnist-32", "codebook_restart_every=2"],
        ["recipe=generator", "model=generator-fmnist"],
    ],
)
def test_resume_continues_exactly(tmp_path, runs, recipe):
    """Stopping at step 3 and starting again gives the same loss sequence as one uninterrupted run."""
    extra = list(recipe)
    if "recipe=generator" in extra:
        extra += [
            f"tokenizer={runs / 'tokenizer/checkpoint'}",
            "model_overrides={hidden: 32, depth: 1, heads: 2, intermediate: 64, codebook_size: 64}",
        ]
    else:
        extra.append(f"model_overrides={TINY_TITOK}".replace(" ", ""))
    run(tmp_path, "straight", *extra, "steps=6", "ckpt_every=3")
    run(tmp_path, "resumed", *extra, "steps=6", "ckpt_every=3", "stop_at=3")
    run(tmp_path, "resumed", *extra, "steps=6", "ckpt_every=3")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    a = load_checkpoint(tmp_path / "straight/checkpoint").state_dict()
    b = load_checkpoint(tmp_path / "resumed/checkpoint").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch reaches the same weights as 1 process."""
    settings = [
        *COMMON,
        "recipe=tokenizer",
        "model=titok-fmnist-32",
        f"model_overrides={TINY_TITOK}".replace(" ", ""),
        "steps=4",
        "codebook_restart_every=0",
        "ema_decay=0.0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with socket.socket() as sock:  # a free port: a fixed one can be taken or still in TIME_WAIT
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
        "-m",
        "training",
        "train",
        f"out={tmp_path / 'ddp'}",
        *settings,
    ]
    done = subprocess.run(cmd, env=env, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    train(load_config(None, [f"out={tmp_path / 'single'}", *settings]))
    a = load_checkpoint(tmp_path / "ddp/checkpoint").state_dict()
    b = load_checkpoint(tmp_path / "single/checkpoint").state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f"largest weight difference {worst}"
    moved = load_checkpoint(tmp_path / "single/checkpoint").encoder.conv_out.weight
    assert not torch.equal(moved, torch.zeros_like(moved))


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown training settings"):
        load_config(None, ["stepz=3"])
    with pytest.raises(ValueError, match="unknown recipe"):
        load_config(None, ["recipe=nope"])
    assert load_config(None, ["lr=1e-4"]).lr == 1e-4  # YAML reads 1e-4 as a string: taken as the float it spells
    with pytest.raises(ValueError, match="lr must be a number"):
        load_config(None, ["lr=fast"])
    with pytest.raises(ValueError, match="steps must be an integer"):
        load_config(None, ["steps=1.5"])
    with pytest.raises(ValueError, match="only decoder_depth applies to an init checkpoint"):
        run(tmp_path, "t", "recipe=tokenizer", "init=checkpoints/titok-fmnist/tokenizer", "model_overrides={depth: 1}")
    with pytest.raises(ValueError, match="needs tokenizer"):
        run(tmp_path, "g", "recipe=generator", "model=generator-fmnist", "steps=1")


def test_lr_schedule_warms_up_then_decays():
    cfg = load_config(None, ["steps=100", "warmup_steps=10", "min_lr_ratio=0.1"])
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(10, cfg) > lr_factor(50, cfg) > lr_factor(99, cfg)


def test_generator_fine_tunes_from_its_checkpoint(tmp_path, runs):
    """``init`` starts a generator run from a trained generator's weights (a tokenizer fine-tuned end to end keeps
    many token ids, so its generator need not start from scratch); a tokenizer checkpoint there is refused."""
    start = runs / "generator" / "checkpoint"
    extra = ["recipe=generator", f"tokenizer={runs / 'tokenizer/checkpoint'}", "steps=2", "lr=0"]
    run(tmp_path, "ft", *extra, f"init={start}", "ema_decay=0")
    a, b = load_checkpoint(start).state_dict(), load_checkpoint(tmp_path / "ft/checkpoint").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the fine-tune kept the init weights exactly
    with pytest.raises(Exception, match="not a generator"):
        run(tmp_path, "wrong", *extra, f"init={runs / 'tokenizer/checkpoint'}")
