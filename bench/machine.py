"""This machine's facts and its measured fp32 matmul peak: the yardstick for achieved GFLOP/s."""

import os
import platform
import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def simd() -> str:
    """The widest vector extensions the CPU reports (they bound the fp32 peak)."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return ", ".join(f for f in ("avx512f", "avx512_bf16", "avx2", "fma", "amx_tile") if f in flags) or "none"


def versions() -> str:
    import numpy as np
    import onnxruntime as ort

    parts = [f"onnxruntime {ort.__version__}", f"numpy {np.__version__}", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.insert(0, f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def facts(threads: int) -> list[str]:
    """Markdown bullet lines: CPU, threads, library versions."""
    return [
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs; {simd()}), threads used: {threads}",
        f"- {versions()}",
    ]


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """The best fp32 GFLOP/s of a square matmul in PyTorch (oneDNN/MKL) with ``threads`` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm-up: thread pool and packing buffers
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def median_seconds(fn, warmup: int, repeats: int) -> float:
    """The median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
