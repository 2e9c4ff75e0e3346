"""Closed-loop load on the gateway: per route and concurrency, latency percentiles and throughput.

    python bench/load.py --url http://127.0.0.1:8000                        # a running gateway
    python bench/load.py --repo model_repository --compare-generation      # also spawn gateways to compare
                                                                           # step-level batching vs one at a time

Each of C clients sends one request, waits for the answer and sends the next, for ``--duration`` seconds per
point (after a short warm-up). Requests: tokenize one 32x32 PNG, detokenize one sequence, generate one image
(random class, seed). ``--compare-generation`` starts two gateways on free loopback ports, the default one and
one with ``TITOK_MAX_BATCH_SIZE=1`` (one generation advances at a time, one row per model call), and sweeps
generate on both. Prints Markdown tables.
"""

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def png_bytes() -> bytes:
    """The benchmarks' request image: a fixed random 32x32 RGB PNG."""
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _bodies(client: httpx.Client) -> dict:
    """A request body per route (the detokenize one from a real tokenize answer)."""
    image = base64.b64encode(png_bytes()).decode()
    tokens = client.post("/v1/tokenize", json={"images": [image]}).raise_for_status().json()["tokens"]
    return {
        "tokenize": lambda i: {"images": [image]},
        "detokenize": lambda i: {"tokens": tokens},
        "generate": lambda i: {"class_labels": i % 10, "seed": i},
    }


class _Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the cores with the gateway, and a full
    client library costs several ms of CPU per request, which would be measured as the gateway's."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the load generator speaks plain HTTP: {url!r} is not an http://host[:port] URL")
        self.host, self.port = parts.hostname, parts.port or 80
        self.reader = self.writer = None

    async def post(self, path: str, body: dict) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        data = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        await self.reader.readexactly(int(headers["content-length"]))  # our JSON answers always carry a length
        return int(lines[0].split()[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _point(url: str, route: str, body, concurrency: int, duration: float, warmup: float) -> dict:
    """Closed loop at one concurrency: latencies of the requests that started after the warm-up."""
    latencies, errors, counter = [], 0, iter(range(10**9))
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def client():
        nonlocal errors
        connection = _Connection(url)
        try:
            while (sent := time.perf_counter()) < stop_at:
                status = await connection.post(f"/v1/{route}", body(next(counter)))
                done = time.perf_counter()
                if sent >= measure_from:
                    if status == 200:
                        latencies.append(done - sent)
                    else:
                        errors += 1
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    ms = np.asarray(latencies) * 1000
    pct = np.percentile(ms, [50, 95, 99]) if len(ms) else [float("nan")] * 3
    return {"n": len(ms), "errors": errors, "p50": pct[0], "p95": pct[1], "p99": pct[2], "rps": len(ms) / duration}


def sweep(url: str, routes: list[str], levels: list[int], duration: float, warmup: float, title: str) -> str:
    """A Markdown table of one gateway's sweep."""
    with httpx.Client(base_url=url, timeout=60) as client:
        bodies = _bodies(client)
    lines = [f"### {title}", "", "| route | concurrency | requests | p50 ms | p95 ms | p99 ms | req/s | errors |"]
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for route in routes:
        for c in levels:
            r = asyncio.run(_point(url, route, bodies[route], c, duration, warmup))
            row = f"| {route} | {c} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} | "
            lines.append(row + f"{r['errors']} |")
            if not sys.stdout.isatty():  # progress while stdout goes to a file; on a terminal the table is enough
                print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Gateway:
    """A gateway subprocess (``python -m service``) with extra settings."""

    def __init__(self, repo: str, poll_s: float = 0.1, **settings):
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "TITOK_PORT": str(port), "TITOK_MODEL_REPOSITORY": repo, "TITOK_LOG_LEVEL": "warning"}
        env.update({f"TITOK_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(poll_s)
        self.close()
        raise RuntimeError("the gateway did not get ready")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running gateway (default: spawn one on --repo)")
    p.add_argument("--repo", default="model_repository", help="model repository for spawned gateways")
    p.add_argument("--routes", default="tokenize,detokenize,generate")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    p.add_argument("--compare-generation", action="store_true", help="generate: step batching vs one at a time")
    return p


def report(args) -> str:
    """The Markdown tables of one sweep (and of the one-at-a-time generation gateway with --compare-generation)."""
    levels = [int(c) for c in args.concurrency.split(",")]
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    spawned = None if args.url else _Gateway(args.repo)
    try:
        tables = [sweep(args.url or spawned.url, routes, levels, args.duration, args.warmup, "default settings")]
    finally:
        if spawned:
            spawned.close()
    if args.compare_generation:
        single = _Gateway(args.repo, max_batch_size=1)
        try:
            title = "generate, one generation at a time (TITOK_MAX_BATCH_SIZE=1)"
            tables.append(sweep(single.url, ["generate"], levels, args.duration, args.warmup, title))
        finally:
            single.close()
    return "\n\n".join(tables)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    print(f"{os.cpu_count()} CPUs; {args.duration:g} s per point\n")
    print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
