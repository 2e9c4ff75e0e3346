"""Per route, the shipped graphs alone vs the engine in-process vs the gateway over HTTP, at concurrency 1 and 32,
in one run; and where a generated image's time goes (graphs, sampling, scheduling, image encoding, HTTP).

    python -m bench.routes --repo model_repository

- graphs alone: the family's ONNX graphs called back to back on one thread, with the gateway's own session
  options, nothing else: tokenize is one encoder call of B images, detokenize one decoder call of B sequences,
  generate one generator call per step (B conditional rows, plus B null-class rows while guidance needs them) and
  one decoder call of B; B = the concurrency (1 or 32).
- engine: the gateway's engine (micro-batchers, generation scheduler, worker thread) called in-process by C
  closed-loop clients, on already decoded images and checked token ids, answers not encoded.
- HTTP: a `python -m service` subprocess driven by C closed-loop keep-alive clients (bench/load.py).

The shares of a generated image's time come from the same run: time inside the graphs (counted by the backend
around each session.run), in the sampler functions the scheduler calls (whatever it calls from
titok_core.sampler), the rest of the engine (scheduling, batching, thread hops: the engine's time less those two),
the image encoding (PNG, timed alone on the same images) and HTTP with JSON and base64 (the HTTP time less the
engine's and the encoding's).
"""

import argparse
import asyncio
import base64
import functools
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import service.scheduler
from bench.load import _Connection, _Gateway, png_bytes
from bench.machine import median_seconds
from service.images import encode_image, load_image
from service.metrics import Metrics
from service.registry import Registry
from service.settings import Settings
from titok_core.sampler import Generation

ROUTES = ("tokenize", "detokenize", "generate")
NOTE = (
    "Graphs alone: the family's ONNX graphs called back to back on one thread with the gateway's session options, "
    "batch = the concurrency (tokenize one encoder call; detokenize one decoder call; generate one generator call per "
    "step, conditional and null-class rows, then one decoder call). Engine: the gateway's batchers, scheduler and "
    "worker thread called in-process by C closed-loop clients (images already decoded, answers not encoded). HTTP: "
    "a `python -m service` subprocess and C keep-alive clients (bench/load.py). Each figure is the median of "
    "interleaved rounds, so that a neighbour's load on the shared cores weighs on the three columns alike."
)


def _rate(fn, items: int, duration: float) -> dict:
    """Items/s of ``fn`` (which makes ``items``) called back to back for ``duration`` s after one warm-up call, and
    the CPU seconds of this process per item."""
    fn()
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < duration:
        fn()
        count += items
    return {"rps": count / elapsed, "cpu_s": (time.process_time() - cpu) / count}


def graphs_alone(model, route: str, batch: int, duration: float) -> dict:
    """Images/s and CPU s per image of a route's graphs alone at ``batch`` (see the module's docstring)."""
    info, backend, rng = model.info, model.backend, np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, info.image_size, info.image_size, 3), dtype=np.uint8)
    tokens = rng.integers(0, info.codebook_size, (batch, info.num_tokens), dtype=np.int64)
    sampling = model.sampling()
    dims = dict(seq_len=info.num_tokens, codebook_size=info.codebook_size, num_classes=info.num_classes)
    gen = Generation.start(0, 0, sampling, **dims)

    def generate():
        masked = np.where(rng.random(tokens.shape) < 0.5, info.codebook_size, tokens)
        for step in range(sampling.num_steps):
            gen.step = step  # whether this step's guidance needs a null-class row (the schedule may turn it off)
            rows = np.concatenate([masked, masked]) if gen.needs_uncond else masked
            classes = np.arange(len(rows), dtype=np.int64) % (info.num_classes + 1)
            backend.run_graph("generator", rows, classes.reshape(-1, 1))
        backend.run_graph("decoder", tokens)

    calls = {
        "tokenize": lambda: backend.run_graph("encoder", images),
        "detokenize": lambda: backend.run_graph("decoder", tokens),
        "generate": generate,
    }
    return _rate(calls[route], batch, duration)


@contextmanager
def timed_sampler():
    """Seconds spent in the titok_core.sampler functions the scheduler calls, whichever they are (patched in the
    scheduler's namespace for the duration)."""
    seconds: defaultdict[str, float] = defaultdict(float)
    originals = {
        name: fn
        for name, fn in vars(service.scheduler).items()
        if callable(fn) and not isinstance(fn, type) and getattr(fn, "__module__", "") == "titok_core.sampler"
    }

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start

        return wrapper

    for name, fn in originals.items():
        setattr(service.scheduler, name, timed(name, fn))
    try:
        yield seconds
    finally:
        for name, fn in originals.items():
            setattr(service.scheduler, name, fn)


async def closed_loop(clients, concurrency: int, duration: float, warmup: float, snapshot=lambda: ()) -> dict:
    """``concurrency`` clients, each sending its next request when its last is answered (``clients()`` makes one: an
    async ``send(i)`` that returns whether the answer was a success, and an async ``close()``).

    Throughput is concurrency / mean latency (Little's law for a closed loop) over the requests sent after the
    warm-up: unlike a count of answers in a window, it is not quantised by the batches that answer 32 at once.
    ``snapshot()`` (counters, e.g. seconds inside the graphs) is divided per answer between the first measured send
    and the end."""
    latencies: list[float] = []
    errors, answered, counter, marks = 0, 0, iter(range(10**9)), {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def client():
        nonlocal errors, answered
        send, close = clients()
        try:
            while (sent := time.perf_counter()) < stop_at:
                if "start" not in marks and sent >= measure_from:
                    marks["start"] = snapshot()
                ok = await send(next(counter))
                answered += "start" in marks
                if sent >= measure_from and ok:
                    latencies.append(time.perf_counter() - sent)
                elif sent >= measure_from:
                    errors += 1
        finally:
            await close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    end = snapshot()
    per_answer = [(e - b) / max(answered, 1) for b, e in zip(marks.get("start", end), end, strict=True)]
    mean = float(np.mean(latencies)) if latencies else float("nan")
    p50 = 1000 * float(np.median(latencies)) if latencies else float("nan")
    return {"rps": concurrency / mean, "p50": p50, "errors": errors, "per_answer": per_answer}


async def engine_point(model, route: str, concurrency: int, duration: float, warmup: float, sampler) -> dict:
    """Closed-loop clients calling the engine in-process; per answer the seconds inside the graphs and the
    sampler."""
    info, rng = model.info, np.random.default_rng(0)
    image = load_image(png_bytes(), info.image_size, 1 << 24, "image")[None]
    tokens = rng.integers(0, info.codebook_size, (1, info.num_tokens), dtype=np.int64)
    sampling = model.sampling()

    async def send(i: int) -> bool:
        if route == "tokenize":
            await model.tokenize(image)
        elif route == "detokenize":
            await model.detokenize(tokens)
        else:
            await model.generate([i % info.num_classes], [i], sampling)
        return True

    async def close() -> None:
        pass

    def snapshot():
        return sum(model.backend.graph_seconds.values()), sum(sampler.values()), time.process_time()

    point = await closed_loop(lambda: (send, close), concurrency, duration, warmup, snapshot)
    point["graph_s"], point["sampler_s"], point["cpu_s"] = point.pop("per_answer")
    return point


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def http_point(gateway: _Gateway, route: str, body, concurrency: int, duration: float, warmup: float) -> dict:
    """Closed-loop keep-alive clients (bench/load.py's lean one) on a gateway; CPU s per answer of the gateway's
    process (the clients' own CPU is not counted)."""
    url = gateway.url

    def clients():
        connection = _Connection(url)

        async def send(i: int) -> bool:
            return await connection.post(f"/v1/{route}", body(i)) == 200

        return send, connection.close

    point = await closed_loop(clients, concurrency, duration, warmup, lambda: (process_cpu_s(gateway.proc.pid),))
    (point["cpu_s"],) = point.pop("per_answer")
    return point


async def _measure(repo: str, levels: list[int], duration: float, warmup: float, rounds: int, routes=ROUTES) -> dict:
    registry = Registry.load(Settings(model_repository=repo), Metrics())
    model = registry.get(None)
    bodies = _bodies(model)
    runs: defaultdict[tuple[str, str, int], list[dict]] = defaultdict(list)
    await registry.start()
    gateway = _Gateway(repo)
    try:
        with timed_sampler() as sampler:
            # rounds of every point, interleaved: a neighbour's load on the shared cores then weighs on the three
            # columns alike, and the median of the rounds is reported
            for _ in range(rounds):
                for route in routes:
                    for c in levels:
                        runs["graphs", route, c].append(graphs_alone(model, route, c, duration))
                        # a generation at concurrency 32 takes seconds: its window holds several of them
                        span = duration * (3 if route == "generate" and c > 1 else 1)
                        runs["engine", route, c].append(await engine_point(model, route, c, span, warmup, sampler))
                        http = await http_point(gateway, route, bodies[route], c, span, warmup)
                        runs["http", route, c].append(http)
                        rates = (runs[where, route, c][-1]["rps"] for where in ("graphs", "engine", "http"))
                        print(
                            f"{route} c={c}: graphs, engine, HTTP " + ", ".join(f"{r:.1f}" for r in rates),
                            file=sys.stderr,
                        )
        images: list = []  # generated images, whose PNG encoding is timed for the generate stages
        if "generate" in routes:
            images = (await model.generate([1] * max(levels), list(range(max(levels))), model.sampling()))[1]
    finally:
        gateway.close()
        await registry.close()
    png_s = 0.0
    if len(images):
        png_s = median_seconds(lambda: [encode_image(im, "png") for im in images], 1, 5) / len(images)
    medians = {key: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for key, rs in runs.items()}
    for key, rs in runs.items():  # errors are counted over the rounds, not a median
        medians[key]["errors"] = sum(r.get("errors", 0) for r in rs)
    graphs = medians.get(("graphs", "generate", max(levels)))
    return {"rates": medians, "png_s": png_s, "graphs_s": 1 / graphs["rps"] if graphs else None}


def measure(repo: str, levels: list[int], duration: float, warmup: float, rounds: int, routes=ROUTES) -> dict:
    """Every figure of the tables, in one run: rates[(where, route, c)] (medians of the rounds) and the generate
    stage times."""
    return asyncio.run(_measure(repo, levels, duration, warmup, rounds, routes))


def _bodies(model) -> dict:
    image = base64.b64encode(png_bytes()).decode()
    tokens = np.random.default_rng(0).integers(0, model.info.codebook_size, model.info.num_tokens).tolist()
    return {
        "tokenize": lambda i: {"images": [image]},
        "detokenize": lambda i: {"tokens": [tokens]},
        "generate": lambda i: {"class_labels": i % model.info.num_classes, "seed": i},
    }


def tables(figures: dict, levels: list[int], routes=ROUTES) -> list[str]:
    rates = figures["rates"]
    lines = [
        "| route | concurrency | graphs alone (images/s) | engine (req/s) | HTTP (req/s) | engine / graphs "
        "| HTTP / graphs | engine p50 ms | HTTP p50 ms | HTTP errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for route in routes:
        for c in levels:
            g, e, h = (rates[where, route, c] for where in ("graphs", "engine", "http"))
            lines.append(
                f"| {route} | {c} | {g['rps']:.1f} | {e['rps']:.1f} | {h['rps']:.1f} | {e['rps'] / g['rps']:.0%} "
                f"| {h['rps'] / g['rps']:.0%} | {e['p50']:.1f} | {h['p50']:.1f} | {h['errors']} |"
            )
    lines += [
        "",
        "CPU per image (all threads; graphs alone and engine: the benchmark's process, HTTP: the gateway's), a view "
        "that a neighbour's load on the shared cores distorts less than the rates:",
        "",
        "| route | concurrency | graphs alone CPU ms | engine CPU ms | HTTP CPU ms | graphs / HTTP |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for route in routes:
        for c in levels:
            g, e, h = (1000 * rates[where, route, c]["cpu_s"] for where in ("graphs", "engine", "http"))
            lines.append(f"| {route} | {c} | {g:.2f} | {e:.2f} | {h:.2f} | {g / h:.0%} |")
    if "generate" not in routes:
        return lines
    c = max(levels)
    engine = rates["engine", "generate", c]
    total, engine_s = 1 / rates["http", "generate", c]["rps"], 1 / engine["rps"]
    graphs_s, png_s = figures["graphs_s"], figures["png_s"]
    stages = [
        ("the graphs alone (generator steps and decoder, nothing else)", graphs_s),
        ("sampling (the titok_core.sampler functions the scheduler calls)", engine["sampler_s"]),
        ("the graphs slowed by the work beside them (inside session.run, beyond alone)", engine["graph_s"] - graphs_s),
        (
            "scheduling, batching, thread hops (the rest of the engine)",
            engine_s - engine["graph_s"] - engine["sampler_s"],
        ),
        ("image encoding (PNG, timed alone)", png_s),
        ("HTTP, JSON, base64 (the rest)", total - engine_s - png_s),
    ]
    lines += [
        "",
        f"Where a generated image's time goes at concurrency {c}: per image, the HTTP time is 1 / its req/s and the "
        "engine's 1 / its own; the sampler and the graphs are timed inside the engine runs above, the encoding alone, "
        "the rest by difference (host work that overlaps a graph call counts twice, so a rest may come out below 0).",
        "",
        "| stage | ms per image | share |",
        "|---|---:|---:|",
        *(f"| {name} | {1000 * s:.2f} | {s / total:.0%} |" for name, s in stages),
        f"| total (HTTP) | {1000 * total:.2f} | 100% |",
    ]
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--concurrency", default="1,32", help="client counts (and graph batch sizes)")
    p.add_argument("--duration", type=float, default=2.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each point")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every point (their median is reported)")
    p.add_argument("--routes", default=",".join(ROUTES), help="the routes measured (generate's take longest)")
    return p


def report(args) -> str:
    levels = [int(c) for c in args.concurrency.split(",")]
    routes = tuple(r for r in ROUTES if r in args.routes.split(","))
    figures = measure(args.repo, levels, args.duration, args.warmup, args.rounds, routes)
    return "\n".join(tables(figures, levels, routes))


def main(argv=None) -> int:
    print(report(parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
