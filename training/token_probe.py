"""What a 1D tokenizer's tokens hold: reconstructions from the first k tokens, and single tokens swapped.

    python -m training token-probe --tokenizer checkpoints/titok-fmnist/tokenizer --out-dir docs

- First k: every token after the k-th is replaced by one fixed filler token (the code used most often on the test
  set, a "typical" token), then decoded; PSNR against the original image per k, over ``--num-test`` test images,
  and a picture (rows: images; columns: k).
- Swaps: for pairs of test images (A, B), A with its token at position p replaced by B's, for every p; the mean
  pixel change per position tells which positions carry the most, and a picture shows A, B and a few swaps.
The images are the Fashion-MNIST test split under ``--data-root``. Writes ``tokens-first-k.png``,
``tokens-swap.png`` and ``tokens.json`` (the tables), and prints the tables.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .data import FASHION_MNIST_DIR, load_fashion_mnist
from .evaluation import decode, reconstruct
from .metrics import psnr
from .models.blocks import to_unit_float
from .report import markdown_table, save_grid

KS = (0, 1, 2, 4, 8, 12, 16, 24, 32)


def first_k(tokens: torch.Tensor, k: int, filler: int) -> torch.Tensor:
    """The ids with every position from k on replaced by ``filler``."""
    out = tokens.clone()
    out[:, k:] = filler
    return out


def swapped(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, N) ids: row p is ``a`` with its token p taken from ``b``."""
    n = a.shape[0]
    rows = a.repeat(n, 1)
    rows[torch.arange(n), torch.arange(n)] = b
    return rows


def _enlarged(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour enlargement, so 32x32 cells stay legible in the docs."""
    return images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)


def run(args) -> dict:
    torch.manual_seed(0)
    tokenizer = load_checkpoint(args.tokenizer).eval()
    images, _ = load_fashion_mnist("test", root=args.data_root, limit=args.num_test)
    tokens, _ = reconstruct(tokenizer, images)
    n = tokens.shape[1]
    filler = int(torch.bincount(tokens.flatten()).argmax())
    real = to_unit_float(images)
    ks = [k for k in KS if k <= n]

    psnr_by_k = {}
    for k in ks:
        recon = decode(tokenizer, first_k(tokens, k, filler))
        psnr_by_k[k] = float(psnr(to_unit_float(recon), real).mean())
    shown = torch.arange(args.num_shown)
    cells = [decode(tokenizer, first_k(tokens[shown], k, filler)) for k in ks]
    grid = torch.stack([images[shown], *cells], dim=1).flatten(0, 1)  # per image: original, then each k
    save_grid(_enlarged(grid, args.scale), Path(args.out_dir) / "tokens-first-k.png", nrow=len(ks) + 1)

    # swaps: mean absolute pixel change (0-255) of A's decoding when its token p comes from B
    rng = np.random.default_rng(0)
    pairs = rng.choice(len(tokens), size=(args.num_pairs, 2), replace=False)
    base = decode(tokenizer, tokens[pairs[:, 0]]).float()
    change = torch.zeros(n)
    pictures = []
    for i, (a, b) in enumerate(pairs):
        out = decode(tokenizer, swapped(tokens[a], tokens[b])).float()
        change += (out - base[i]).abs().mean(dim=(1, 2, 3))
        if i < args.num_shown:
            picks = torch.linspace(0, n - 1, args.swaps_shown).round().long()
            pictures.append(torch.cat([images[[a, b]], out[picks].to(torch.uint8)]))
    change /= len(pairs)
    save_grid(
        _enlarged(torch.cat(pictures), args.scale), Path(args.out_dir) / "tokens-swap.png", nrow=2 + args.swaps_shown
    )

    result = {
        "tokenizer": str(args.tokenizer),
        "data_root": str(args.data_root),
        "num_test": len(images),
        "filler_token": filler,
        "psnr_first_k": psnr_by_k,
        "swap_positions_shown": torch.linspace(0, n - 1, args.swaps_shown).round().long().tolist(),
        "swap_mean_abs_change_by_position": [round(float(c), 3) for c in change],
    }
    Path(args.out_dir, "tokens.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def tables(result: dict) -> str:
    ks = result["psnr_first_k"]
    first = markdown_table(
        ["first k tokens", *map(str, ks)], [["PSNR (dB)", *(f"{v:.2f}" for v in ks.values())]], "l" + "r" * len(ks)
    )
    change = result["swap_mean_abs_change_by_position"]
    swaps = markdown_table(
        ["token position", *map(str, range(len(change)))],
        [["mean pixel change (0-255)", *(f"{c:.1f}" for c in change)]],
        "l" + "r" * len(change),
    )
    return first + "\n\n" + swaps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m training token-probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tokenizer", required=True, help="a TiTok checkpoint folder")
    p.add_argument("--data-root", default=str(FASHION_MNIST_DIR), help="Fashion-MNIST folder (default: %(default)s)")
    p.add_argument("--out-dir", default="docs")
    p.add_argument("--num-test", type=int, default=1000, help="test images for the PSNR table")
    p.add_argument("--num-pairs", type=int, default=100, help="image pairs for the swap table")
    p.add_argument("--num-shown", type=int, default=6, help="images (pairs) in each picture")
    p.add_argument("--swaps-shown", type=int, default=8, help="swapped positions shown per pair")
    p.add_argument("--scale", type=int, default=3, help="enlargement of the pictures")
    args = p.parse_args(argv)
    result = run(args)
    print(f"Images: the Fashion-MNIST test split, {result['num_test']} images from {args.data_root}\n")
    print(tables(result))
    return result
