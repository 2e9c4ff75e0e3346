"""ONNX Runtime against PyTorch eager on this CPU, same weights, same threads: per graph and per pipeline.

    python -m bench.graphs                                      # fresh titok-fmnist-32 + generator-fmnist
    python -m bench.graphs --tokenizer DIR --generator DIR      # checkpoint folders (or released .bin files)
    python -m bench.graphs --preset titok-l-32 --batch-sizes 1,8 --pipelines   # the paper's L-32, random weights

Graph table: per graph and batch size, items/s (images; generator rows = one MaskGIT step for one image), the
model's FLOPs per item (counted on the eager module) and the achieved GFLOP/s of ONNX Runtime as a share of this
machine's measured fp32 matmul peak. Pipeline table: what a user gets, images/s of tokenize (encoder), detokenize
(decoder) and generate (the service's MaskGIT sampler for the preset's steps with guidance, then the decoder).
Each timing is the median of several runs after warm-up.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.machine import facts, matmul_peak_gflops, median_seconds
from export.onnx_graphs import DecoderGraph, EncoderGraph, GeneratorGraph, export_decoder, export_graph
from export.signatures import family_signatures
from export.sources import load_source
from titok_core.sampler import SamplingSettings, generate
from training.models import build_model, check_pair

# The graphs with a PyTorch twin to race; the step graph (generator + sampling) is timed per route by bench.routes
GRAPHS = ("encoder", "decoder", "generator")


def load_family(args) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """Tokenizer, generator and a description: checkpoints, or a preset pair with random weights."""
    if args.tokenizer:
        (tokenizer, _), (generator, _) = load_source(args.tokenizer), load_source(args.generator)
        return tokenizer, generator, f"`{args.tokenizer}` + `{args.generator}`"
    torch.manual_seed(0)
    default = "generator-fmnist" if "fmnist" in args.preset else f"{args.preset}-generator"
    gen_preset = args.generator_preset or default
    tokenizer, generator = build_model(args.preset).eval(), build_model(gen_preset).eval()
    return tokenizer, generator, f"`{args.preset}` + `{gen_preset}` (random weights)"


def export_three(tokenizer, generator, out: Path) -> dict[str, Path]:
    """The three shipped graphs (no verification copies: the paper-size ones are gigabytes)."""
    cfg = tokenizer.config
    signatures = family_signatures(cfg.image_size, cfg.num_tokens, cfg.codebook_size)
    return {
        "encoder": export_graph(EncoderGraph(tokenizer), signatures["encoder"], out / "encoder.onnx"),
        "decoder": export_decoder(tokenizer, out / "decoder.onnx"),
        "generator": export_graph(GeneratorGraph(generator), signatures["generator"], out / "generator.onnx"),
    }


def graph_inputs(tokenizer, generator, batch: int, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Random but valid inputs of every graph: images, ids, ids with masks and class ids (null class included)."""
    cfg, gcfg = tokenizer.config, generator.config
    ids = rng.integers(0, cfg.codebook_size, (batch, cfg.num_tokens))
    masked = np.where(rng.random(ids.shape) < 0.5, gcfg.mask_id, ids)
    return {
        "encoder": {"images": rng.integers(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)},
        "decoder": {"tokens": ids},
        "generator": {"tokens": masked, "class_ids": rng.integers(0, gcfg.num_classes + 1, (batch, 1))},
    }


def flops_per_item(module: torch.nn.Module, tensors: list[torch.Tensor]) -> float:
    """Model FLOPs (matmuls, convolutions, attention) of one forward, per batch row."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # its module hooks fail under inference_mode
        module(*tensors)
    return counter.get_total_flops() / len(tensors[0])


class Engines:
    """The same three graphs as PyTorch eager modules and as ONNX Runtime sessions."""

    def __init__(self, tokenizer, generator, paths: dict[str, Path], threads: int, spinning: bool):
        self.modules = {
            "encoder": EncoderGraph(tokenizer),
            "decoder": DecoderGraph(tokenizer),
            "generator": GeneratorGraph(generator),
        }
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # spinning (onnxruntime's default) suits back-to-back calls of one graph; between the calls of several
        # graphs and numpy sampling, each session's spinning threads steal the cores (the gateway turns it off)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        providers = ["CPUExecutionProvider"]
        self.sessions = {g: ort.InferenceSession(str(paths[g]), options, providers=providers) for g in GRAPHS}

    def eager(self, graph: str, *arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.modules[graph](*(torch.from_numpy(a) for a in arrays)).numpy()

    def onnx(self, graph: str, *arrays: np.ndarray) -> np.ndarray:
        session = self.sessions[graph]
        return session.run(None, dict(zip((i.name for i in session.get_inputs()), arrays, strict=True)))[0]


def graph_table(engines: Engines, tokenizer, generator, args, peak: float) -> list[str]:
    rng = np.random.default_rng(0)
    lines = [
        "| graph | batch | GFLOP/item | PyTorch eager (items/s) | ONNX Runtime (items/s) | ORT / PyTorch "
        "| ORT GFLOP/s | of matmul peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for graph in GRAPHS:
        for batch in args.batch_sizes:
            arrays = list(graph_inputs(tokenizer, generator, batch, rng)[graph].values())
            gflop = flops_per_item(engines.modules[graph], [torch.from_numpy(a) for a in arrays]) / 1e9
            t_eager = median_seconds(lambda: engines.eager(graph, *arrays), args.warmup, args.repeats)  # noqa: B023
            t_onnx = median_seconds(lambda: engines.onnx(graph, *arrays), args.warmup, args.repeats)  # noqa: B023
            achieved = gflop * batch / t_onnx
            lines.append(
                f"| {graph} | {batch} | {gflop:.3f} | {batch / t_eager:,.1f} | {batch / t_onnx:,.1f} "
                f"| {t_eager / t_onnx:.2f}x | {achieved:,.1f} | {achieved / peak:.0%} |"
            )
            print(lines[-1], flush=True)
    return lines


def pipeline_table(engines: Engines, tokenizer, generator, args) -> list[str]:
    """images/s a user gets: tokenize, detokenize, and generate (sampler steps with guidance, then decode)."""
    cfg, gcfg = tokenizer.config, generator.config
    settings = SamplingSettings(
        num_steps=gcfg.num_steps,
        guidance_scale=gcfg.guidance_scale,
        guidance_schedule=gcfg.guidance_schedule,
        temperature=gcfg.temperature,
    )
    dims = dict(seq_len=cfg.num_tokens, codebook_size=cfg.codebook_size, num_classes=gcfg.num_classes)
    rng = np.random.default_rng(0)
    lines = [
        f"Generation: {settings.num_steps} steps, guidance {settings.guidance_scale:g} ({settings.guidance_schedule}, "
        "conditional and unconditional rows in one call), then the decoder.",
        "",
        "| pipeline | batch | PyTorch eager (images/s) | ONNX Runtime (images/s) | ORT / PyTorch |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("tokenize", "detokenize", "generate"):
        for batch in args.batch_sizes:
            feeds = graph_inputs(tokenizer, generator, batch, rng)
            classes = list(rng.integers(0, gcfg.num_classes, batch))

            def run(call, name=name, feeds=feeds, classes=classes, seeds=tuple(range(batch))):
                if name == "tokenize":
                    return call("encoder", feeds["encoder"]["images"])
                if name == "detokenize":
                    return call("decoder", feeds["decoder"]["tokens"])
                logits = lambda tokens, ids: call("generator", tokens, ids.reshape(-1, 1))  # noqa: E731
                tokens = generate(logits, classes, list(seeds), settings=settings, **dims)
                return call("decoder", tokens)

            t_eager = median_seconds(lambda: run(engines.eager), args.warmup, args.repeats)  # noqa: B023
            t_onnx = median_seconds(lambda: run(engines.onnx), args.warmup, args.repeats)  # noqa: B023
            rates = f"{batch / t_eager:,.2f} | {batch / t_onnx:,.2f} | {t_eager / t_onnx:.2f}x"
            lines.append(f"| {name} | {batch} | {rates} |")
            print(lines[-1], flush=True)
    return lines


def run(args) -> str:
    torch.set_num_threads(args.threads)
    tokenizer, generator, models = load_family(args)
    check_pair(tokenizer.config, generator.config)
    peak = matmul_peak_gflops(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_three(tokenizer, generator, Path(tmp))
        spinning = None if args.no_graphs else Engines(tokenizer, generator, paths, args.threads, spinning=True)
        sleeping = Engines(tokenizer, generator, paths, args.threads, spinning=False) if args.pipelines else None
    lines = [
        f"{models}: ONNX Runtime vs PyTorch eager, median of {args.repeats} runs after {args.warmup} warm-up runs.",
        "",
        *facts(args.threads),
        f"- measured fp32 matmul peak (PyTorch, 2048x2048, {args.threads} threads): {peak:,.1f} GFLOP/s",
        "",
    ]
    if not args.no_graphs:
        lines += graph_table(spinning, tokenizer, generator, args, peak)
        lines += [
            "",
            "Items are images (encoder, decoder) or generator rows (one MaskGIT step for one image). ONNX Runtime with "
            "its default spinning threads (as Triton's onnxruntime backend runs it).",
            "",
        ]
    if args.pipelines:
        lines += ["Pipelines: ONNX Runtime threads sleep between calls, as the gateway runs them.", ""]
        lines += pipeline_table(sleeping, tokenizer, generator, args)
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="checkpoint folder or released .bin (default: --preset, random weights)")
    p.add_argument("--generator", help="checkpoint folder or released .bin (default: --preset's generator)")
    p.add_argument("--preset", default="titok-fmnist-32", help="tokenizer preset when no checkpoint is given")
    p.add_argument("--generator-preset", help="generator preset (default: the tokenizer preset's generator)")
    p.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=[1, 32])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for both (default: torch's)")
    p.add_argument("--pipelines", action="store_true", help="also tokenize/detokenize/generate images/s")
    p.add_argument("--no-graphs", action="store_true", help="only the pipeline table")
    return p


def main(argv=None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if bool(args.tokenizer) != bool(args.generator):
        p.error("give both --tokenizer and --generator, or neither")
    print(run(args))


if __name__ == "__main__":
    main()
