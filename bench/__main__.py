"""The benchmark suite: every table of docs/benchmarks.md from one command, on this machine, ratios from one run.

    python -m bench                       # all sections; writes docs/benchmarks.md
    python -m bench --skip-large          # keep the earlier TiTok-L-32 sections (the slow ones) as they are

Run it on a quiet machine: other work on the same cores distorts the ratios (PyTorch eager suffers most).
"""

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from titok_core.extras import require

# the suite runs PyTorch and onnxruntime itself: one line naming the extra, not a traceback, when they are missing
require("torch", "onnxruntime", purpose="python -m bench")

from bench import gateway, graphs, hostile, load, released, routes  # noqa: E402
from bench.machine import facts  # noqa: E402

FAMILY = "checkpoints/titok-fmnist"


def section(title: str, command: str, body: str, note: str = "") -> str:
    parts = [f"## {title}", "", "```bash", command, "```", "", body]
    return "\n".join(parts + (["", note] if note else [])) + "\n"


def _section_of(path: Path, title: str) -> str | None:
    """The ``## title`` section of an earlier benchmarks file, up to the next ``## `` heading."""
    if not path.exists():
        return None
    text = path.read_text()
    start = text.find(f"## {title}")
    if start < 0:
        return None
    end = text.find("\n## ", start + 1)
    return text[start : end + 1 if end >= 0 else None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip-large", action="store_true", help="keep the earlier TiTok-L-32 section, do not rerun it")
    args = p.parse_args(argv)
    started = time.time()
    sections = []

    cmd = f"python -m bench.graphs --tokenizer {FAMILY}/tokenizer --generator {FAMILY}/generator --pipelines"
    body = graphs.run(graphs.parser().parse_args(cmd.split()[3:] + ["--threads", str(args.threads)]))
    sections.append(section("ONNX Runtime vs PyTorch eager: the shipped titok-fmnist family", cmd, body))

    cmd = f"python -m bench.routes --repo {args.repo}"
    body = routes.report(routes.parser().parse_args(["--repo", args.repo]))
    title = "Per route: the graphs alone vs the engine in-process vs HTTP, and where a generated image's time goes"
    sections.append(section(title, cmd, body, routes.NOTE))

    cmd = f"python -m bench.gateway --repo {args.repo}"
    body = gateway.report(gateway.parser().parse_args(["--repo", args.repo]))
    sections.append(section("The gateway: batching gain, start-up, memory, stages", cmd, body))

    cmd = f"python bench/load.py --repo {args.repo} --compare-generation --duration 3 --warmup 1"
    body = load.report(load.parser().parse_args(cmd.split()[2:]))
    sections.append(section("The gateway under closed-loop load, per route and concurrency", cmd, body))

    cmd = f"python -m bench.hostile --repo {args.repo}"
    body = hostile.report(args.repo)
    sections.append(section("The front door under attack (issue 16; docs/reliability.md)", cmd, body))

    large_title = "The paper's TiTok-L-32 (random weights), 256x256"
    served_title = "The released models served at 256x256 (random weights): HTTP vs the graphs alone"
    if args.skip_large:
        for title in (large_title, served_title):
            earlier = _section_of(Path(args.out), title)
            if earlier:  # keep the slow sections' last measurement rather than drop them
                sections.append(earlier.rstrip("\n") + "\n\n(Carried over from an earlier run of `python -m bench`.)\n")
    else:
        cmd = "python -m bench.graphs --preset titok-l-32 --batch-sizes 1,8 --pipelines --no-graphs"
        cmd += " --repeats 1 --warmup 1"  # runs of many seconds each: one timed run after one warm-up
        body = graphs.run(graphs.parser().parse_args(cmd.split()[3:] + ["--threads", str(args.threads)]))
        sections.append(section(large_title, cmd, body))
        cmd = "python -m bench.released --model titok-l-32 --batch-sizes 1,8"
        body = released.report(released.parser().parse_args(cmd.split()[3:] + ["--threads", str(args.threads)]))
        sections.append(section(served_title, cmd, body))

    minutes = (time.time() - started) / 60
    head = [
        "# Benchmarks",
        "",
        f"Written by `python -m bench` on {datetime.date.today()} in {minutes:.0f} min. Every number below was "
        "measured on this machine in that one run; ratios compare measurements of the same run.",
        "",
        *facts(args.threads),
        "",
    ]
    Path(args.out).write_text("\n".join(head) + "\n" + "\n".join(sections))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
