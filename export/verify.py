"""ONNX Runtime against PyTorch on real inputs: token ids, decoded pixels, generator logits and the tokens of one
sampling step, at several batches."""

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from titok_core.sampler import SCHEDULES, Generation, SamplingSettings, step_inputs
from training.data import DatasetCorruptError, DatasetNotFoundError, load_fashion_mnist
from training.report import markdown_table
from training.sampling import MaskGITStep

from .onnx_graphs import DecoderGraph, EncoderGraph, GeneratorGraph, export_decoder

BATCH_SIZES = (1, 3, 32)
DECODER_FLOAT_TOL = 1e-4  # max abs error of the float32 decoder, pixels in [0, 1]
DECODER_LSB_TOL = 1  # the uint8 decoder may round the other way at a .5 boundary
GENERATOR_TOL = 1e-3  # max abs error of the logits
# the step's tokens: the same float32 ops on both sides, but the last bit of exp / cumsum (torch adds float32 in
# double) moves a token when a uniform falls within ~1e-6 of a CDF step: allow a rare one
STEP_AGREEMENT = 0.999
TIE_GAP = 1e-4  # a differing token is a near tie if its two codes' distances differ by at most this (relative)


@dataclass
class Check:
    """One comparison at one batch size."""

    graph: str
    batch: int
    check: str
    value: float
    limit: str
    ok: bool
    note: str = ""


def ort_session(path: str | Path) -> ort.InferenceSession:
    """A CPU session with as many threads as torch uses, so both sides run on the same cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sample_images(image_size: int, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """(count, H, W, 3) uint8: Fashion-MNIST test images at 32x32 when installed, else seeded uniform noise."""
    if image_size == 32:
        try:
            images, _ = load_fashion_mnist("test", limit=count)
            return images.permute(0, 2, 3, 1).contiguous().numpy(), "Fashion-MNIST test images"
        except (DatasetNotFoundError, DatasetCorruptError):
            pass
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8), "random uint8 images"


def tie_gaps(tokenizer: nn.Module, images: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray) -> np.ndarray:
    """Where two id arrays differ: |d(z, code_b) - d(z, code_a)| / d(z, code_a), from PyTorch's latents in float64."""
    differ = ids_a != ids_b
    if not differ.any():
        return np.zeros(0)
    with torch.no_grad():
        z = tokenizer.encode_latents(torch.from_numpy(images).permute(0, 3, 1, 2))  # (B, C, 1, N)
        codes = tokenizer.quantize.codebook().double()  # (K, C)
    z = z.permute(0, 2, 3, 1).reshape(*ids_a.shape, -1).double()  # (B, N, C)
    if tokenizer.quantize.use_l2_norm:
        z = F.normalize(z, dim=-1)
    z = z[torch.from_numpy(differ)]  # (M, C)
    d_a = (z - codes[torch.from_numpy(ids_a[differ])]).pow(2).sum(-1)
    d_b = (z - codes[torch.from_numpy(ids_b[differ])]).pow(2).sum(-1)
    return ((d_b - d_a).abs() / d_a.clamp_min(1e-12)).numpy()


# ---------------------------------------------------------------------------------------------------
# The checks, one graph at a time
# ---------------------------------------------------------------------------------------------------


# PyTorch runs once, on the largest batch: row i is its answer for input i whatever the batch, while ONNX Runtime
# runs at every batch size, which is what shows that the exported batch dimension is really dynamic.


def _check_encoder(tokenizer, session, images, ref, sizes) -> tuple[list[Check], int, int]:
    checks, same_total, total = [], 0, 0
    for b in sizes:
        got = session.run(None, {"images": images[:b]})[0]
        same = got == ref[:b]
        gaps = tie_gaps(tokenizer, images[:b], ref[:b], got)
        ok = got.dtype == np.int64 and got.shape == ref[:b].shape and bool((gaps <= TIE_GAP).all())
        note = "identical" if same.all() else f"{(~same).sum()} differ; max relative distance gap {gaps.max():.1e}"
        limit = f"1, or near ties (gap <= {TIE_GAP:g})"
        checks.append(Check("encoder", b, "token agreement", float(same.mean()), limit, ok, note))
        same_total, total = same_total + int(same.sum()), total + same.size
    return checks, same_total, total


def _check_decoder(tokenizer, session_u8, session_float, tokens, sizes) -> list[Check]:
    with torch.no_grad():
        ref = DecoderGraph(tokenizer, float_output=True)(torch.from_numpy(tokens[: max(sizes)]))  # (B, H, W, 3)
    ref_u8 = (ref * 255.0).round().to(torch.uint8).numpy().astype(np.int16)  # as the uint8 graph does it
    ref = ref.numpy()
    checks = []
    for b in sizes:
        got = session_float.run(None, {"tokens": tokens[:b]})[0]
        err = float(np.abs(got - ref[:b]).max())
        limit = f"<= {DECODER_FLOAT_TOL:g}"
        checks.append(Check("decoder (float32)", b, "max abs error", err, limit, err <= DECODER_FLOAT_TOL))
        got_u8 = session_u8.run(None, {"tokens": tokens[:b]})[0]
        lsb = np.abs(got_u8.astype(np.int16) - ref_u8[:b])
        ok = got_u8.dtype == np.uint8 and int(lsb.max()) <= DECODER_LSB_TOL
        note = f"{(lsb > 0).mean():.3%} of values differ"
        limit = f"<= {DECODER_LSB_TOL}"
        checks.append(Check("decoder (uint8)", b, "max LSB difference", int(lsb.max()), limit, ok, note))
    return checks


def _check_generator(generator, session, tokens, sizes, rng) -> list[Check]:
    cfg, n = generator.config, max(sizes)
    ids = tokens[:n].copy()
    ids[rng.random(ids.shape) < rng.random((n, 1))] = cfg.mask_id  # a different masking ratio per row
    classes = rng.integers(0, cfg.num_classes + 1, (n, 1))  # the null class included
    with torch.no_grad():
        ref = GeneratorGraph(generator)(torch.from_numpy(ids), torch.from_numpy(classes)).numpy()
    checks = []
    for b in sizes:
        got = session.run(None, {"tokens": ids[:b], "class_ids": classes[:b]})[0]
        err = float(np.abs(got - ref[:b]).max())
        checks.append(Check("generator", b, "max abs error", err, f"<= {GENERATOR_TOL:g}", err <= GENERATOR_TOL))
    return checks


def step_generations(cfg, tokens: np.ndarray, rng: np.random.Generator) -> list[Generation]:
    """Generations mid-way through varied schedules (every schedule, annealing on and off, the null class, a last
    step), their hidden positions drawn over ``tokens``: the inputs of the step checks."""
    gens = []
    for i, row in enumerate(tokens):
        settings = SamplingSettings(
            num_steps=int(rng.integers(2, 12)),
            guidance_scale=float(rng.uniform(0, 6)),
            guidance_schedule=SCHEDULES[i % len(SCHEDULES)],
            temperature=float(rng.uniform(0.5, 10)),
            softmax_annealing=bool(i % 2),
        )
        gen = Generation.start(
            int(rng.integers(0, cfg.num_classes)),
            int(rng.integers(0, 2**63)),
            settings,
            seq_len=len(row),
            codebook_size=cfg.mask_id,
            num_classes=cfg.num_classes,
        )
        gen.step = int(rng.integers(0, settings.num_steps))
        hidden = max(2, int(len(row) * (1 - gen.step / settings.num_steps)))
        gen.tokens = row.astype(np.int64).copy()
        gen.tokens[rng.permutation(len(row))[:hidden]] = cfg.mask_id
        if i % 5 == 4:
            gen.class_id = cfg.num_classes  # unconditional
        gens.append(gen)
    return gens


def _check_step(generator, session, tokens, sizes, rng) -> list[Check]:
    inputs = step_inputs(step_generations(generator.config, tokens[: max(sizes)], rng))
    with torch.no_grad():
        ref = MaskGITStep(generator)(*map(torch.from_numpy, inputs)).numpy()
    names = [i.name for i in session.get_inputs()]
    checks = []
    for b in sizes:
        got = session.run(None, dict(zip(names, (x[:b] for x in inputs), strict=True)))[0]
        same = float((got == ref[:b]).mean()) if got.shape == ref[:b].shape else 0.0
        ok = got.dtype == np.int64 and same >= STEP_AGREEMENT
        checks.append(Check("step", b, "token agreement", same, f">= {STEP_AGREEMENT:g}", ok))
    return checks


# ---------------------------------------------------------------------------------------------------
# The whole family
# ---------------------------------------------------------------------------------------------------


def verify_family(
    tokenizer: nn.Module,
    generator: nn.Module,
    graphs: dict[str, Path],
    batch_sizes=BATCH_SIZES,
    decoder_batch_sizes=None,
    seed: int = 0,
) -> dict:
    """Compare the graphs with PyTorch, as a report dict; the float32 decoder is exported unless in ``graphs``."""
    tokenizer.eval()
    generator.eval()
    sizes = sorted(set(batch_sizes))
    decoder_sizes = sorted(set(decoder_batch_sizes or sizes))
    images, source = sample_images(tokenizer.config.image_size, max(sizes + decoder_sizes), seed)
    with torch.no_grad():
        tokens = EncoderGraph(tokenizer)(torch.from_numpy(images)).numpy()  # realistic ids for the other graphs
    with tempfile.TemporaryDirectory() as tmp:
        paths = dict(graphs)
        if "decoder_float" not in paths:  # a repository holds only the uint8 decoder
            paths["decoder_float"] = export_decoder(tokenizer, Path(tmp) / "decoder_float.onnx", float_output=True)
        s = {name: ort_session(path) for name, path in paths.items()}
        encoder_checks, same, total = _check_encoder(tokenizer, s["encoder"], images, tokens, sizes)
        checks = encoder_checks + _check_decoder(tokenizer, s["decoder"], s["decoder_float"], tokens, decoder_sizes)
        checks += _check_generator(generator, s["generator"], tokens, sizes, np.random.default_rng(seed))
        checks += _check_step(generator, s["step"], tokens, sizes, np.random.default_rng(seed + 1))
    return {
        "ok": all(c.ok for c in checks),
        "inputs": source,
        "batch_sizes": sizes,
        "decoder_batch_sizes": decoder_sizes,
        "token_agreement": same / total,
        "checks": [asdict(c) for c in checks],
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def _fmt(value) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if 1e-2 <= abs(value) <= 1 else f"{value:.2e}"


def report_markdown(report: dict) -> str:
    """The report as a Markdown table, with a one-line verdict under it."""
    rows = [
        [c["graph"], c["batch"], c["check"], _fmt(c["value"]), c["limit"], "yes" if c["ok"] else "**NO**", c["note"]]
        for c in report["checks"]
    ]
    lines = [markdown_table(["graph", "batch", "check", "value", "limit", "ok", "note"], rows, "lrlrlcl")]
    verdict = "passed" if report["ok"] else "FAILED"
    lines.append("")
    lines.append(
        f"Verification {verdict} on {report['inputs']}: token agreement {report['token_agreement']:.4%} "
        f"(torch {report['torch']}, onnxruntime {report['onnxruntime']})."
    )
    return "\n".join(lines)
