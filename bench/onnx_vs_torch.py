"""ONNX Runtime against PyTorch eager on this CPU: the three graphs of a family, same weights, same threads.

    python bench/onnx_vs_torch.py                                   # fresh titok-fmnist-32 + generator-fmnist
    python bench/onnx_vs_torch.py --tokenizer DIR --generator DIR  # checkpoint folders (or released .bin files)

Per graph and batch size: warm-up, then the median of several timed runs, as images/s (rows/s for the generator,
one row = one MaskGIT step for one image). Prints a Markdown table with the machine's facts.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script from anywhere

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from export.onnx_graphs import DecoderGraph, EncoderGraph, GeneratorGraph, export_family  # noqa: E402
from export.sources import check_pair, load_source  # noqa: E402
from training.models import build_model  # noqa: E402


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(tokenizer, generator, batch: int, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Random but valid inputs of every graph: images, ids, ids with masks and class ids (null class included)."""
    cfg, gcfg = tokenizer.config, generator.config
    ids = rng.integers(0, cfg.codebook_size, (batch, cfg.num_tokens))
    masked = np.where(rng.random(ids.shape) < 0.5, gcfg.mask_id, ids)
    return {
        "encoder": {"images": rng.integers(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)},
        "decoder": {"tokens": ids},
        "generator": {"tokens": masked, "class_ids": rng.integers(0, gcfg.num_classes + 1, (batch, 1))},
    }


def run(args) -> str:
    torch.set_num_threads(args.threads)
    if args.tokenizer:
        (tokenizer, _), (generator, _) = load_source(args.tokenizer), load_source(args.generator)
        models = f"`{args.tokenizer}` + `{args.generator}`"
    else:
        torch.manual_seed(0)
        tokenizer, generator = build_model("titok-fmnist-32").eval(), build_model("generator-fmnist").eval()
        models = "`titok-fmnist-32` + `generator-fmnist` (random weights)"
    check_pair(tokenizer.config, generator.config)
    modules = {
        "encoder": EncoderGraph(tokenizer),
        "decoder": DecoderGraph(tokenizer),
        "generator": GeneratorGraph(generator),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graphs = export_family(tokenizer, generator, tmp)
        sessions = {
            g: ort.InferenceSession(str(graphs[g]), options, providers=["CPUExecutionProvider"]) for g in modules
        }
        rng = np.random.default_rng(0)
        for batch in args.batch_sizes:
            feeds = inputs(tokenizer, generator, batch, rng)
            for graph, module in modules.items():
                tensors = [torch.from_numpy(a) for a in feeds[graph].values()]

                def eager(module=module, tensors=tensors):
                    with torch.inference_mode():
                        module(*tensors)

                def onnx(session=sessions[graph], feed=feeds[graph]):
                    session.run(None, feed)

                t_torch = median_seconds(eager, args.warmup, args.repeats)
                t_ort = median_seconds(onnx, args.warmup, args.repeats)
                rows.append((graph, batch, batch / t_torch, batch / t_ort, t_torch / t_ort))
    lines = [
        f"ONNX Runtime vs PyTorch eager, {models}, median of {args.repeats} runs after {args.warmup} warm-up runs.",
        "",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), threads used: {args.threads}",
        f"- torch {torch.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}",
        "",
        "| graph | batch | PyTorch eager (items/s) | ONNX Runtime (items/s) | ORT / PyTorch |",
        "|---|---:|---:|---:|---:|",
    ]
    for graph, batch, eager_rate, ort_rate, ratio in sorted(rows, key=lambda r: (list(modules).index(r[0]), r[1])):
        lines.append(f"| {graph} | {batch} | {eager_rate:,.1f} | {ort_rate:,.1f} | {ratio:.2f}x |")
    lines.append("")
    lines.append("Items are images (encoder, decoder) or generator rows (one MaskGIT step for one image).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="checkpoint folder or released .bin (default: a fresh titok-fmnist-32)")
    p.add_argument("--generator", help="checkpoint folder or released .bin (default: a fresh generator-fmnist)")
    p.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=[1, 32])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for both (default: torch's)")
    args = p.parse_args()
    if bool(args.tokenizer) != bool(args.generator):
        p.error("give both --tokenizer and --generator, or neither")
    print(run(args))


if __name__ == "__main__":
    main()
