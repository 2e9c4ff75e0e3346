"""The reference preprocessing: any image -> the model's (size, size, 3) uint8 RGB input.

Training and serving both call it, so a model sees the same pixels in both: any mode becomes 8-bit RGB, with
transparency (an alpha channel or a tRNS colour key) composited on **black** (Fashion-MNIST's background, so a
cut-out object looks like the training data); 16-bit grey is scaled to 8 bits; the shorter side is resized to the
model's size with bicubic filtering (PIL widens the kernel when shrinking, i.e. antialiased) and the centre square is
cropped, as torchvision's ``Resize(size)`` + ``CenterCrop(size)``. An image more elongated than ``MAX_ASPECT`` has its
centre square cut out *before* resizing, so a 1x100,000 strip is never resized up into gigabytes.

Conversions work strip by strip: a large image costs its decoded pixels plus one RGB copy, not several copies.
"""

import numpy as np
from PIL import Image

MAX_ASPECT = 4  # longer side / shorter side beyond which the centre square is cut out before resizing
_STRIP_PIXELS = 1 << 18  # pixels per strip of a conversion


def _strips(img: Image.Image, convert) -> Image.Image:
    """RGB image of ``convert`` (PIL strip -> uint8 (h, w, 3)) applied to horizontal strips of ``img``."""
    w, h = img.size
    out = Image.new("RGB", (w, h))
    rows = max(1, _STRIP_PIXELS // w)
    for top in range(0, h, rows):
        out.paste(Image.fromarray(convert(img.crop((0, top, w, min(h, top + rows))))), (0, top))
    return out


def _on_black(strip: Image.Image) -> np.ndarray:
    rgba = strip.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"))


def _grey(scale: float):
    def convert(strip: Image.Image) -> np.ndarray:
        grey = np.clip(np.rint(np.asarray(strip, dtype=np.float64) / scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)

    return convert


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB; transparency (alpha or tRNS) composited on black, 16/32-bit grey scaled to 8 bits."""
    if "transparency" in img.info and img.mode in ("P", "RGB", "L", "1", "I", "I;16"):
        # a palette or colour key: PIL applies it when converting to an alpha mode (a copy, then strips)
        img = img.convert("LA" if img.mode in ("L", "1") else "RGBA")
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _strips(img, _on_black)
    if img.mode.startswith("I"):  # 16-bit PNGs open as I;16 or I
        return _strips(img, _grey(257.0))
    if img.mode == "F":
        return _strips(img, _grey(1.0))
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, P without transparency


def crop_box(width: int, height: int) -> tuple[int, int, int, int] | None:
    """The centre square cut out before resizing, for an image more elongated than ``MAX_ASPECT``; else None."""
    if max(width, height) <= MAX_ASPECT * min(width, height):
        return None
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def preprocess(img: Image.Image, size: int, release: bool = False) -> np.ndarray:
    """The model's input (size, size, 3) uint8: RGB, shorter side to ``size`` (bicubic, antialiased), centre crop.
    ``release``: ``img`` is closed (its pixels freed) as soon as a converted copy exists (the caller is done)."""
    source = img
    box = crop_box(*img.size)
    if box is not None:  # before the conversion too: only the square is converted
        img = img.crop(box)
    img = to_rgb(img)
    if release and img is not source:
        source.close()
    w, h = img.size
    if min(w, h) != size:
        if w <= h:
            new_w, new_h = size, max(size, int(size * h / w))
        else:
            new_w, new_h = max(size, int(size * w / h)), size
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
