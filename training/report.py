"""What the evaluations print and draw: Markdown tables and PNG grids of images (numpy and PIL only)."""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_row(cells: Sequence[object]) -> str:
    """One table row: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column (l, r or c), left-aligned where it is short."""
    rule = "|" + "".join(_RULES[a] + "|" for a in align.ljust(len(header), "l"))
    return "\n".join([markdown_row(header), rule, *(markdown_row(row) for row in rows)])


def fmt(value: float | None, spec: str) -> str:
    """A number, or a dash when it was not measured."""
    return "—" if value is None else format(value, spec)


def save_grid(images_uint8, path: str | Path, nrow: int, gap_value: int = 255) -> Path:
    """Write uint8 images (M, 3, H, W) (a tensor on any device or an array) as a PNG grid of nrow images per row,
    1px gaps between cells."""
    x = np.asarray(images_uint8.cpu() if hasattr(images_uint8, "cpu") else images_uint8)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(f"want uint8 images (M >= 1, 3, H, W), got {x.dtype} {x.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, not {nrow}")
    m, _, h, w = x.shape
    cols, rows = min(nrow, m), math.ceil(m / nrow)
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, 3), gap_value, dtype=np.uint8)
    for i, img in enumerate(x):
        r, c = divmod(i, nrow)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img.transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
