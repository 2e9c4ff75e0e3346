"""The released TiTok models at full size (random weights: the same cost) served at 256x256: images/s over HTTP
against the graphs alone, per route and batch size.

    python -m bench.released --model titok-l-32 --batch-sizes 1,8

Per model: released-layout files are written from random weights, built by ``python -m export build --released``
(verification skipped: at full size it takes minutes, and tests/test_released.py checks the same path), then

- graphs alone: the ONNX Runtime sessions of the family called directly; tokenize is the encoder on preprocessed
  pixels, detokenize the decoder, generate the sampler's steps (the family's defaults) on the generator graph then
  the decoder;
- HTTP: a ``python -m service`` subprocess serving the family, one request of B images (tokenize: B PNG photos of
  another size, resized and cropped by the gateway; detokenize: B token sequences; generate: ``n = B``).

One timed run after one warm-up per cell (runs of many seconds each), HTTP right after the graphs for each cell;
images/s = B / seconds. Both sides use ``--threads`` onnxruntime threads.
"""

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from export.released import RELEASES, build_released
from titok_core.images import preprocess
from titok_core.manifest import read_manifest
from titok_core.sampler import generate

ROOT = Path(__file__).resolve().parent.parent
READY_S = 900  # warming a full-size family up runs every graph at batch 8: minutes on a busy CPU


def write_weights(model: str, folder: Path) -> None:
    """Random full-size models in the released files' layout and names."""
    from training.models import build_model

    torch.manual_seed(0)
    release = RELEASES[model]
    torch.save(build_model(model).state_dict(), folder / release.tokenizer_file)
    torch.save(build_model(f"{model}-generator").state_dict(), folder / release.generator_file)


def photo_png(width: int = 512, height: int = 384, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)  # smooth, photo-like sizes
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def timed(fn) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _Gateway:
    """``python -m service`` serving ``repo``, ready (its warm-up runs every graph: minutes for a large family)."""

    def __init__(self, repo: Path, threads: int):
        port = 18000 + os.getpid() % 1000
        env = {**os.environ, "TITOK_PORT": str(port), "TITOK_MODEL_REPOSITORY": str(repo), "TITOK_LOG_LEVEL": "warning"}
        env["TITOK_ORT_INTRA_OP_THREADS"] = str(threads)
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900)
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.client.get("/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.close()
        raise RuntimeError("the gateway did not get ready")

    def post(self, route: str, body: dict) -> None:
        self.client.post(f"/v1/{route}", json=body).raise_for_status()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def measure(repo: Path, family: str, sizes: list[int], threads: int) -> dict[tuple[str, str, int], float]:
    """Seconds per call, ``(side, route, batch)``: each cell over HTTP right after the same cell on the graphs alone,
    so that both sides see the same load of a shared machine."""
    manifest = read_manifest(repo, family)
    gateway = _Gateway(repo, threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {
        g: ort.InferenceSession(str(repo / e.path), options, providers=["CPUExecutionProvider"])
        for g, e in manifest.graphs.items()
    }
    pixels = preprocess(Image.open(io.BytesIO(photo_png())), manifest.image_size)
    rng = np.random.default_rng(0)
    dims = dict(seq_len=manifest.num_tokens, codebook_size=manifest.codebook_size, num_classes=manifest.num_classes)

    def logits(tokens, classes):
        return sessions["generator"].run(None, {"tokens": tokens, "class_ids": classes.reshape(-1, 1)})[0]

    def graphs(route: str, b: int, tokens: np.ndarray):
        if route == "tokenize":
            return sessions["encoder"].run(None, {"images": np.repeat(pixels[None], b, axis=0)})
        if route == "generate":
            tokens = generate(logits, [207] * b, list(range(b)), settings=manifest.sampling, **dims)
        return sessions["decoder"].run(None, {"tokens": tokens})

    out = {}
    try:
        for b in sizes:
            photos = [base64.b64encode(photo_png(seed=i)).decode() for i in range(b)]
            tokens = rng.integers(0, manifest.codebook_size, (b, manifest.num_tokens), dtype=np.int64)
            bodies = {
                "tokenize": {"model": family, "images": photos},
                "detokenize": {"model": family, "tokens": tokens.tolist()},
                "generate": {"model": family, "class_labels": [207], "n": b, "seed": 0},
            }
            for route, body in bodies.items():
                out["graphs", route, b] = timed(lambda route=route, b=b, tokens=tokens: graphs(route, b, tokens))
                out["http", route, b] = timed(lambda route=route, body=body: gateway.post(route, body))
                print(
                    f"{family} {route} b{b}: {out['http', route, b]:.1f} s over HTTP, "
                    f"{out['graphs', route, b]:.1f} s on the graphs",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        gateway.close()
    return out


def _measure_built(model: str, folder: Path, sizes: list[int], threads: int) -> dict:
    weights, repo = folder / "weights", folder / "repository"
    if not (repo / f"{model}.manifest.json").is_file():
        weights.mkdir(parents=True, exist_ok=True)
        write_weights(model, weights)
        assert build_released(model, weights, repo, verify=False).ok
    return measure(repo, model, sizes, threads)


def report(args) -> str:
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    lines = [
        "| model | route | batch | HTTP images/s | graphs images/s | HTTP / graphs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model in args.model or ["titok-l-32"]:
        if args.workdir:  # kept: a second run measures the family already built there
            seconds = _measure_built(model, Path(args.workdir) / model, sizes, args.threads)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                seconds = _measure_built(model, Path(tmp), sizes, args.threads)
        for route in ("tokenize", "detokenize", "generate"):
            for b in sizes:
                h, g = b / seconds["http", route, b], b / seconds["graphs", route, b]
                lines.append(f"| {model} | {route} | {b} | {h:.2f} | {g:.2f} | {h / g:.0%} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", choices=sorted(RELEASES), help="repeatable (default: titok-l-32)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime threads (both sides)")
    p.add_argument("--workdir", default=None, help="keep the full-size files (GBs) here, reused by the next run")
    return p


def main(argv=None) -> int:
    print(report(parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
