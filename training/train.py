"""The training loop shared by every recipe: AdamW with warm-up + cosine, EMA, gradient clipping, bf16 autocast on
GPU, exact resume, a progress bar, CSV (and TensorBoard) metrics, and data parallelism over ``torchrun``.

    python -m training train configs/titok-fmnist-32.yaml steps=2000 out=runs/x
    torchrun --nproc-per-node 2 -m training train configs/generator-fmnist.yaml

Exact resume: the data order is a pure function of (seed, step), and the run state (weights, EMA, optimiser,
scheduler, discriminator, codebook usage, random generators) is written to ``out/state.pt`` every
``ckpt_every`` steps; starting again with the same ``out`` continues where it stopped, step for step.
The EMA weights are also written as a model checkpoint (``out/checkpoint``: safetensors + config.json), whose
metadata records the step, the recipe, the settings and the class names of the data set it was trained on.
"""

import csv
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn

from .checkpoint import save_checkpoint
from .data import build_dataset
from .models import strict_fields
from .recipes import RECIPES, Run, RunInputs, build_run


@dataclass
class TrainConfig:
    """Everything a run needs; YAML files set these fields, ``key=value`` arguments override them."""

    recipe: str = "tokenizer"
    model: str = "titok-fmnist-32"  # a preset name
    model_overrides: dict = field(default_factory=dict)
    data: str = "fashion-mnist"  # or a path to an image folder (class sub-folders)
    data_limit: int | None = None
    image_size: int = 32
    out: str = "runs/run"
    steps: int = 10000
    batch_size: int = 64  # global: split across data-parallel processes
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 500
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 500
    codebook_restart_every: int = 200  # 0 turns it off
    perceptual_weight: float = 0.0
    perceptual_net: str | None = None  # a classifier checkpoint folder (python -m training classifier)
    class_weight: float = 0.0  # KL of perceptual_net's class probabilities, reconstruction against original
    label_weight: float = 0.0  # cross-entropy of perceptual_net on the reconstruction against the image's label
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    disc_lr: float = 1e-4
    teacher: str | None = None  # proxy-stage1: the VQGAN checkpoint
    init: str | None = None  # proxy-stage2: the stage-1 checkpoint; tokenizer, generator: a checkpoint to fine-tune
    freeze_encoder: bool = False  # tokenizer: train the decoder only (the tokens, and a generator on them, stay valid)
    tokenizer: str | None = None  # generator: the tokenizer checkpoint
    class_dropout: float = 0.1
    label_smoothing: float = 0.1
    unmasked_weight: float = 0.1
    stop_at: int | None = None  # leave the loop early (saving state) as if interrupted: time-sliced runs, tests
    threads: int | None = None
    progress: bool = True


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    """A YAML file (optional) then ``key=value`` overrides, values parsed as YAML scalars; unknown keys fail."""
    data = yaml.safe_load(Path(path).read_text()) if path else {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        data[key] = yaml.safe_load(value)
    strict_fields(TrainConfig, data, "training settings")
    _check_numbers(data)
    if "betas" in data:
        data["betas"] = tuple(data["betas"])
    cfg = TrainConfig(**data)
    if cfg.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {cfg.recipe!r}; one of {sorted(RECIPES)}")
    return cfg


def _check_numbers(data: dict) -> None:
    """Numeric settings as numbers: YAML reads ``1e-4`` (no dot) as a string, which would fail deep inside the
    optimizer; it is taken as the float it spells, anything else that is not a number fails here, naming the key."""
    kinds = {f.name: f.type for f in fields(TrainConfig)}
    for key, value in data.items():
        kind = kinds[key]
        if kind in (float, "float"):
            if isinstance(value, str):
                try:
                    value = data[key] = float(value)
                except ValueError:
                    raise ValueError(f"training setting {key} must be a number, not {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"training setting {key} must be a number, not {value!r}")
        elif kind in (int, "int") and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"training setting {key} must be an integer, not {value!r}")


# ---------------------------------------------------------------------------------------------------
# Pieces of the loop
# ---------------------------------------------------------------------------------------------------


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine from 1 down to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def global_batch(step: int, n: int, cfg: TrainConfig) -> torch.Tensor:
    """Indices of the global batch at ``step``: a fresh permutation per epoch, seeded by (seed, epoch)."""
    per_epoch = n // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the data set ({n} items)")
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
    return perm[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]


class EMA:
    """Exponential moving average of a model's floating-point state (parameters and buffers)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int):
        d = min(self.decay, (1 + step) / (10 + step))  # short warm-up so early checkpoints are usable
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - d)
            else:
                self.shadow[k].copy_(v)


def _all_reduce_grads(params: list[nn.Parameter], world: int):
    """Average gradients over processes (what DDP does), so N processes == one with the global batch."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class MetricsLog:
    """Appends rows to ``out/metrics.csv`` (and TensorBoard when installed); the header is fixed at first write."""

    def __init__(self, out: Path):
        self.path = out / "metrics.csv"
        self.columns: list[str] | None = None
        if self.path.is_file():
            with self.path.open() as f:
                self.columns = next(csv.reader(f), None)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, row: dict):
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])


def truncate_metrics(out: Path, step: int):
    """On resume, drop CSV rows logged after the checkpoint so the log has each step once."""
    path = out / "metrics.csv"
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(keep)


# ---------------------------------------------------------------------------------------------------
# Run state: what an exact resume needs
# ---------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """The moving parts of a run, saved to ``out/state.pt`` every ``ckpt_every`` steps and restored on resume."""

    step: int
    model: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    rng: torch.Generator  # the recipe's draws (masks, class dropout, code restarts), one per rank
    disc: nn.Module | None = None
    disc_opt: torch.optim.Optimizer | None = None
    usage: torch.Tensor | None = None  # code counts since the last restart

    def save(self, path: Path, rank: int, world: int, device: torch.device) -> None:
        """Rank 0 writes every rank's random states with the rest, atomically (a crash keeps the previous file)."""
        rngs = _gather(self.rng.get_state().to(device), world)
        torch_rngs = _gather(torch.get_rng_state().to(device), world)
        if rank != 0:
            return
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.shadow,
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": [r.cpu() for r in rngs],
            "torch_rng": [r.cpu() for r in torch_rngs],
        }
        if self.usage is not None:
            state["usage"] = self.usage
        if self.disc_opt is not None:
            state["disc"], state["disc_opt"] = self.disc.state_dict(), self.disc_opt.state_dict()
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load(self, path: Path, rank: int, device: torch.device) -> None:
        """Everything back as it was at the saved step, this rank's random states included."""
        state = torch.load(path, map_location=device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema.shadow = state["ema"]
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.disc_opt is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])
        if self.usage is not None:
            self.usage.copy_(state["usage"])
        rngs = state["rng"] if "rng" in state else state["gen"]  # "gen": state files written before the rename
        self.rng.set_state(rngs[rank].cpu())
        torch.set_rng_state(state["torch_rng"][rank].cpu())
        self.step = state["step"]


def save_ema_checkpoint(state: TrainState, out: Path, metadata: dict) -> None:
    """The EMA weights as a model checkpoint (``out/checkpoint``), without moving the random streams."""
    model = state.model
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # building must not move the RNG
        snapshot = type(model)(model.config)
    snapshot.load_state_dict(state.ema.shadow, assign=True)
    save_checkpoint(snapshot, out / "checkpoint", metadata={"step": state.step, **metadata})


def _gather(t: torch.Tensor, world: int) -> list[torch.Tensor]:
    if world == 1:
        return [t]
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return parts


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run; returns a summary dict. Rank 0 writes everything under ``cfg.out``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    summary = _train(cfg, world, rank, device)
    if owns_group:
        # every rank leaves together: a rank that exits with the group alive can abort in gloo's threads
        # ("terminate called without an active exception") while the other still writes its checkpoint
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _train(cfg: TrainConfig, world: int, rank: int, device: torch.device) -> dict:
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {world} processes")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    dataset = build_dataset(cfg.data, "train", image_size=cfg.image_size, limit=cfg.data_limit)
    images, labels = _as_tensors(dataset)
    rng = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)  # the recipe's draws, per rank
    run = build_run(RunInputs(cfg, images, labels, device, rng))
    model = run.model.to(device)
    params = run.trainable()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    disc_opt = None
    if run.disc is not None:
        disc_opt = torch.optim.AdamW(run.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
    codebook_size = run.codebook.quantizer.codebook_size if run.codebook is not None else None
    state = TrainState(
        step=0,
        model=model,
        ema=EMA(model, cfg.ema_decay),
        opt=opt,
        sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg)),
        rng=rng,
        disc=run.disc,
        disc_opt=disc_opt,
        usage=torch.zeros(codebook_size, device=device) if codebook_size else None,
    )
    metadata = {
        "recipe": cfg.recipe,
        "train_config": _jsonable(asdict(cfg)),
        "class_names": list(getattr(dataset, "classes", ())),
    }

    state_path = out / "state.pt"
    if state_path.is_file():
        state.load(state_path, rank, device)
        if rank == 0:
            truncate_metrics(out, state.step)
            print(f"resumed {out} at step {state.step}")

    log = MetricsLog(out) if rank == 0 else None
    bar = _progress(cfg, state.step, rank)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    per_rank = cfg.batch_size // world
    model.train()
    t0, seen, last = time.time(), 0, {}
    end = min(cfg.steps, cfg.stop_at or cfg.steps)
    while state.step < end:
        step = state.step
        idx = global_batch(step, run.num_items, cfg)[rank * per_rank : (rank + 1) * per_rank]
        with autocast:
            loss, logs = run.loss(idx, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _all_reduce_grads(params, world)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else torch.zeros(())
        opt.step()
        state.sched.step()
        if state.disc_opt is not None:
            with autocast:
                d_loss = run.pixel.discriminator_loss(idx, step)
            if d_loss is not None:
                state.disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                if world > 1:
                    _all_reduce_grads(list(state.disc.parameters()), world)
                state.disc_opt.step()
                logs["gan_d"] = d_loss.item()
        indices = logs.pop("indices", None)
        if state.usage is not None and indices is not None:
            state.usage += torch.bincount(indices.flatten(), minlength=len(state.usage))
        state.step = step = step + 1
        if state.usage is not None and cfg.codebook_restart_every and step % cfg.codebook_restart_every == 0:
            _restart_codes(run, state, idx, world)
        state.ema.update(model, step)
        seen += len(idx) * world
        last = {"loss": loss.item(), **logs}
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
            ips = seen / max(1e-9, time.time() - t0)
            row = {"step": step, "lr": state.sched.get_last_lr()[0], "grad_norm": float(grad_norm), "img_per_s": ips}
            log.write({**row, **{k: round(v, 6) for k, v in last.items()}})
            t0, seen = time.time(), 0
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{ips:.0f}")
        if bar is not None:
            bar.update(1)
        if step % cfg.ckpt_every == 0 or step == end:
            state.save(state_path, rank, world, device)
            if rank == 0:
                save_ema_checkpoint(state, out, metadata)
    if bar is not None:
        bar.close()
    return {"step": state.step, "out": str(out), **last}


def _restart_codes(run: Run, state: TrainState, idx: torch.Tensor, world: int):
    """Codes unused since the last restart move onto this batch's encoder outputs (rank 0's, broadcast)."""
    usage, quantizer = state.usage, run.codebook.quantizer
    if world > 1:
        dist.all_reduce(usage)
    with torch.no_grad():
        z = run.codebook.latents(idx)
    quantizer.restart_unused(usage, z, rng=state.rng)
    if world > 1:
        dist.broadcast(quantizer.embedding.weight.data, src=0)
    usage.zero_()


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _as_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (uint8) and labels of a data set in memory: Fashion-MNIST is 180 MB, image folders are read once."""
    if hasattr(dataset, "images"):
        return dataset.images, dataset.labels
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _progress(cfg: TrainConfig, step: int, rank: int):
    if rank != 0 or not cfg.progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=cfg.steps, initial=step, desc=cfg.recipe, dynamic_ncols=True)
