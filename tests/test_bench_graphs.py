"""bench.graphs runs on the shipped family: every graph gets a row and the eager and ONNX Runtime twins agree."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import graphs
from export.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ROOT / "checkpoints/titok-fmnist"


def test_the_graph_bench_writes_a_row_per_graph_and_pipeline():
    cmd = [sys.executable, "-m", "bench.graphs", "--tokenizer", str(FAMILY / "tokenizer"), "--generator"]
    cmd += [str(FAMILY / "generator"), "--pipelines", "--batch-sizes", "2", "--repeats", "1", "--warmup", "0"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "| 2 |" in line]
    # each row is printed as it is measured, then again in the finished tables
    assert rows == 2 * ["encoder", "decoder", "generator", "tokenize", "detokenize", "generate"]


def test_the_raced_twins_compute_the_same_thing(tmp_path):
    tokenizer, _ = load_source(str(FAMILY / "tokenizer"))
    generator, _ = load_source(str(FAMILY / "generator"))
    engines = graphs.Engines(tokenizer, generator, graphs.export_three(tokenizer, generator, tmp_path), 1, False)
    feeds = graphs.graph_inputs(tokenizer, generator, 2, np.random.default_rng(0))
    for graph in graphs.GRAPHS:
        arrays = list(feeds[graph].values())
        eager, onnx = engines.eager(graph, *arrays), engines.onnx(graph, *arrays)
        assert eager.shape == onnx.shape
        assert np.abs(eager.astype(np.float64) - onnx.astype(np.float64)).max() <= 1.0  # uint8 pixels: one level
