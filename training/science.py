"""The tokenizer comparisons of docs/science.md: tables and a plot from ``python -m training evaluate`` JSON files.

    python -m training science docs/results-1d-8.json docs/results-1d-16.json docs/results-tokenizer.json \\
        docs/results-1d-64.json docs/results-2d-16.json docs/results-2d-64.json docs/results-two-stage-32.json \\
        --plot docs/token-budget.png

Each file is one evaluated tokenizer; its layout (1D or 2D), token count and recipe (single-stage, or two-stage
through a teacher's proxy codes) are the fields ``kind``, ``layout``, ``num_tokens`` and ``recipe`` the evaluation
writes (``training.evaluation.structure``). The files in docs/ written before those fields existed were given them
once, from the model description of the same entry. Prints three Markdown tables: the 1D token budget, 1D vs 2D at
equal token counts, and single- vs two-stage at equal token counts.
"""

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .report import markdown_table

_RECIPE_LABELS = {"single-stage": "single-stage", "two-stage": "two-stage (proxy codes)"}
# (label, attribute, format, higher is better)
_METRICS = (
    ("PSNR dB", "psnr", "{:.2f}", True),
    ("SSIM", "ssim", "{:.3f}", True),
    ("rFID*", "rfid", "{:.2f}", False),
    ("linear probe", "probe", "{:.1%}", True),
)


@dataclass(frozen=True)
class Tokenizer:
    """One evaluated tokenizer."""

    source: str
    layout: str  # "1D" or "2D"
    tokens: int
    recipe: str  # "single-stage" or "two-stage"
    psnr: float
    ssim: float
    rfid: float
    probe: float
    codebook_used: float

    @property
    def recipe_label(self) -> str:
        return _RECIPE_LABELS[self.recipe]


def load(path: str | Path) -> Tokenizer:
    """A tokenizer's numbers from an evaluation JSON (needs --classifier and a linear probe)."""
    data = json.loads(Path(path).read_text())
    rec = data["reconstruction"]["tokenizer"]
    if rec.get("kind") != "titok":
        raise ValueError(f"{path}: not a TiTok evaluation (kind {rec.get('kind')!r}: {rec.get('model')!r})")
    if "rfid" not in rec or "linear_probe" not in data:
        raise ValueError(f"{path}: evaluate with --classifier and --probe-train > 0")
    return Tokenizer(
        source=str(path),
        layout=rec["layout"],
        tokens=rec["num_tokens"],
        recipe=rec["recipe"],
        psnr=rec["psnr"],
        ssim=rec["ssim"],
        rfid=rec["rfid"],
        probe=data["linear_probe"]["accuracy"],
        codebook_used=rec["codebook_usage"]["used_fraction"],
    )


def _table(rows: list[Tokenizer], keys: list[tuple[str, Callable[[Tokenizer], object]]]) -> str:
    header = [k for k, _ in keys] + [m[0] for m in _METRICS] + ["codes used"]
    cells = [
        [str(fn(t)) for _, fn in keys]
        + [fmt.format(getattr(t, attr)) for _, attr, fmt, _ in _METRICS]
        + [f"{t.codebook_used:.1%}"]
        for t in rows
    ]
    return markdown_table(header, cells, "l" * len(keys) + "r" * (len(_METRICS) + 1))


def token_budget(tokenizers: list[Tokenizer]) -> str:
    """The single-stage 1D tokenizers by token count."""
    rows = sorted((t for t in tokenizers if t.layout == "1D" and t.recipe == "single-stage"), key=lambda t: t.tokens)
    return _table(rows, [("tokens", lambda t: t.tokens)])


def _pairs(tokenizers: list[Tokenizer], keep, differ) -> list[Tokenizer]:
    """Tokenizers that ``keep`` selects, at token counts where ``differ`` takes more than one value."""
    chosen = [t for t in tokenizers if keep(t)]
    counts = {n for n in {t.tokens for t in chosen} if len({differ(t) for t in chosen if t.tokens == n}) > 1}
    return sorted((t for t in chosen if t.tokens in counts), key=lambda t: (t.tokens, differ(t)))


def one_vs_two_d(tokenizers: list[Tokenizer]) -> str:
    """1D and 2D single-stage tokenizers at the token counts both have."""
    rows = _pairs(tokenizers, lambda t: t.recipe == "single-stage", lambda t: t.layout)
    return _table(rows, [("tokens", lambda t: t.tokens), ("layout", lambda t: t.layout)])


def one_vs_two_stage(tokenizers: list[Tokenizer]) -> str:
    """Single- and two-stage 1D tokenizers at the token counts both have."""
    rows = _pairs(tokenizers, lambda t: t.layout == "1D", lambda t: t.recipe)
    return _table(rows, [("tokens", lambda t: t.tokens), ("recipe", lambda t: t.recipe_label)])


def plot(tokenizers: list[Tokenizer], out: str | Path) -> None:
    """Each metric against the token count: single-stage 1D as a line, 2D and two-stage as markers."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series = [
        ("1D, single-stage", lambda t: t.layout == "1D" and t.recipe == "single-stage", dict(marker="o", ls="-")),
        ("2D grid, single-stage", lambda t: t.layout == "2D", dict(marker="s", ls="--")),
        ("1D, two-stage", lambda t: t.layout == "1D" and t.recipe == "two-stage", dict(marker="^", ls="none")),
    ]
    counts = sorted({t.tokens for t in tokenizers})
    fig, axes = plt.subplots(1, len(_METRICS), figsize=(4 * len(_METRICS), 3.4), layout="constrained")
    for ax, (label, attr, _, higher) in zip(axes, _METRICS, strict=True):
        for name, keep, style in series:
            rows = sorted((t for t in tokenizers if keep(t)), key=lambda t: t.tokens)
            if rows:
                ax.plot([t.tokens for t in rows], [getattr(t, attr) for t in rows], label=name, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        ax.set_xlabel("tokens per image")
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training science", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", nargs="+", help="JSON files of python -m training evaluate, one per tokenizer")
    p.add_argument("--plot", help="write the metrics-vs-tokens figure (PNG) here")
    args = p.parse_args(argv)
    tokenizers = [load(path) for path in args.results]
    print("FID* over the features of the Fashion-MNIST classifier trained here (not Inception).\n")
    print("Token budget (1D, single-stage):\n\n" + token_budget(tokenizers) + "\n")
    print("1D vs 2D at equal token counts:\n\n" + one_vs_two_d(tokenizers) + "\n")
    print("Single-stage vs two-stage:\n\n" + one_vs_two_stage(tokenizers))
    if args.plot:
        plot(tokenizers, args.plot)
        print(f"\nwrote {args.plot}")
    return 0
