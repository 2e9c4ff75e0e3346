"""The gateway's batching gain, its start-up and memory, and where a request's time goes.

    python -m bench.gateway --repo model_repository

Tables (HTTP vs the engine vs the graphs alone, per route, is bench/routes.py's):
- Step-level batching: generate requests/s and p50 at concurrency C vs concurrency 1.
- Cold start (process start to the first 200 from /readyz) and resident memory (after start, peak after load).
- One request, piece by piece: the median time of each stage, run alone in-process, beside the HTTP latency.
"""

import argparse
import asyncio
import base64
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench.load import _Gateway, _point, png_bytes
from bench.machine import median_seconds
from service.images import encode_image, load_image
from service.metrics import Metrics
from service.registry import Registry
from service.settings import Settings
from titok_core.sampler import Generation, advance, build_batch


def spinning(repo: str, concurrency: int, duration: float, warmup: float) -> list[str]:
    """Tokenize and generate throughput with onnxruntime's threads spinning between calls (its default) and not."""
    png = base64.b64encode(png_bytes()).decode()
    bodies = {"tokenize": lambda i: {"images": [png]}, "generate": lambda i: {"class_labels": i % 10, "seed": i}}
    rates = {}
    for spin in (True, False):
        gateway = _Gateway(repo, ort_spinning=str(spin).lower())
        try:
            for route, body in bodies.items():
                for c in (1, concurrency):
                    rates[spin, route, c] = asyncio.run(_point(gateway.url, route, body, c, duration, warmup))
        finally:
            gateway.close()
    lines = [
        "| route | concurrency | req/s, spinning | req/s, sleeping (default) | sleeping / spinning |",
        "|---|---:|---:|---:|---:|",
    ]
    for route in bodies:
        for c in (1, concurrency):
            on, off = rates[True, route, c]["rps"], rates[False, route, c]["rps"]
            lines.append(f"| {route} | {c} | {on:.1f} | {off:.1f} | {off / on:.2f}x |")
    return lines


def batching_gain(gateway: _Gateway, levels: list[int], duration: float, warmup: float) -> list[str]:
    body = lambda i: {"class_labels": i % 10, "seed": i}  # noqa: E731
    lines = [
        "| concurrency | req/s | p50 ms | p99 ms | req/s vs c=1 | p50 vs c=1 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    base = None
    for c in levels:
        r = asyncio.run(_point(gateway.url, "generate", body, c, duration, warmup))
        base = base or r
        lines.append(
            f"| {c} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps'] / base['rps']:.2f}x "
            f"| {r['p50'] / base['p50']:.2f}x |"
        )
        print(lines[-1], flush=True)
    return lines


def _memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_start(repo: str, runs: int) -> tuple[list[float], float]:
    """Seconds from process start to ready, per run; and resident MiB of the last one once ready."""
    times, rss = [], float("nan")
    for _ in range(runs):
        start = time.perf_counter()
        gateway = _Gateway(repo, poll_s=0.01)
        times.append(time.perf_counter() - start)
        rss = _memory_mib(gateway.proc.pid, "VmRSS")
        gateway.close()
    return times, rss


def _median_ms(fn, repeats: int = 50) -> float:
    return 1000 * median_seconds(fn, warmup=1, repeats=repeats)


def stages(repo: str) -> list[tuple[str, str, float]]:
    """(request, stage, median ms) of one tokenize and one generate request, each stage run alone in-process."""
    registry = Registry.load(Settings(model_repository=repo), Metrics())
    model = registry.get(None)
    backend, info = model.backend, model.info
    png = png_bytes()
    body = json.dumps({"images": [base64.b64encode(png).decode()]})
    image = load_image(png, info.image_size, 1 << 24, "image")
    run = asyncio.new_event_loop().run_until_complete
    tokens = run(backend.encode(image[None]))
    sampling = model.sampling()
    dims = dict(seq_len=info.num_tokens, codebook_size=info.codebook_size, num_classes=info.num_classes)

    def sampler_only():
        # the numpy part of one generation: batch building and token updates, with stand-in logits
        gen = Generation.start(3, 0, sampling, **dims)
        logits = np.zeros((2, info.num_tokens, info.codebook_size), np.float32)
        while not gen.done:
            batch_tokens, _, rows = build_batch([gen])
            advance([gen], logits[: len(batch_tokens)], rows)

    def generator_calls():
        gen = Generation.start(3, 0, sampling, **dims)
        while not gen.done:
            batch_tokens, classes, rows = build_batch([gen])
            advance([gen], run(backend.logits(batch_tokens, classes)), rows)

    image_out = run(backend.decode(tokens))[0]
    out = [
        ("tokenize", "JSON parse + base64", _median_ms(lambda: base64.b64decode(json.loads(body)["images"][0]))),
        ("tokenize", "PNG decode + preprocess", _median_ms(lambda: load_image(png, info.image_size, 1 << 24, "i"))),
        ("tokenize", "encoder (ONNX Runtime, batch 1)", _median_ms(lambda: run(backend.encode(image[None])))),
        ("tokenize", "response JSON", _median_ms(lambda: json.dumps({"tokens": tokens.tolist()}))),
        ("generate", f"sampler numpy ({sampling.num_steps} steps)", _median_ms(sampler_only)),
        ("generate", f"{sampling.num_steps} steps incl. generator calls", _median_ms(generator_calls, 20)),
        ("generate", "decoder (ONNX Runtime, batch 1)", _median_ms(lambda: run(backend.decode(tokens)))),
        ("generate", "PNG encode + base64", _median_ms(lambda: base64.b64encode(encode_image(image_out, "png")))),
    ]
    run(backend.close())
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--concurrency", type=int, default=32, help="for the batching gain and spinning")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--cold-starts", type=int, default=3)
    return p


def main(argv=None) -> int:
    print(report(parser().parse_args(argv)))
    return 0


def report(args) -> str:
    lines = []
    gateway = _Gateway(args.repo)
    try:
        lines += ["### Step-level batching: generate at concurrency C vs 1", ""]
        lines += batching_gain(gateway, [1, args.concurrency], args.duration, args.warmup)
        peak = _memory_mib(gateway.proc.pid, "VmHWM")
    finally:
        gateway.close()
    lines += ["", "### onnxruntime threads: spinning between calls vs sleeping (`TITOK_ORT_SPINNING`)", ""]
    lines += spinning(args.repo, args.concurrency, args.duration, args.warmup)
    times, rss = cold_start(args.repo, args.cold_starts)
    lines += [
        "",
        "### Cold start and memory",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| process start to ready (median of {len(times)}) | {statistics.median(times):.2f} s |",
        f"| resident memory once ready | {rss:.0f} MiB |",
        f"| peak resident memory after the load above | {peak:.0f} MiB |",
        "",
        "### One request, stage by stage (each stage alone, in-process, median)",
        "",
        "| request | stage | ms |",
        "|---|---|---:|",
    ]
    lines += [f"| {r} | {s} | {ms:.2f} |" for r, s, ms in stages(args.repo)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
