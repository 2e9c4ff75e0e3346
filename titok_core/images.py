"""The reference preprocessing: any image -> the model's (size, size, 3) uint8 RGB input.

Training and serving both call it, so a model sees the same pixels in both: any mode becomes 8-bit RGB, with
transparency (an alpha channel or a tRNS colour key) composited on **black** (Fashion-MNIST's background, so a
cut-out object looks like the training data); 16-bit grey is scaled to 8 bits; the shorter side is resized to the
model's size with bicubic filtering (PIL widens the kernel when shrinking, i.e. antialiased) and the centre square is
cropped, as torchvision's ``Resize(size)`` + ``CenterCrop(size)``. An image more elongated than ``MAX_ASPECT`` has its
centre square cut out *before* resizing, so a 1x100,000 strip is never resized up into gigabytes.

A family whose training images did not fill the frame says so with a content size (Fashion-MNIST: 28x28 garments
centred on a black 32x32 canvas): an image of any other size than the model's is then fitted to that content area
(shorter side to ``content_size``, centre square) and centred on black, so a native 28x28 Fashion-MNIST file is
exactly a training image; an image already at the model's size (e.g. one the model itself returned) is taken as is.

Conversions work strip by strip: a large image costs its decoded pixels plus one RGB copy, not several copies.
"""

import numpy as np
from PIL import Image

MAX_ASPECT = 4  # longer side / shorter side beyond which the centre square is cut out before resizing
_STRIP_PIXELS = 1 << 18  # pixels per strip of a conversion
_REDUCING_GAP = 3.0


def _strips(img: Image.Image, convert, factor: tuple[int, int] = (1, 1)) -> Image.Image:
    """RGB image of ``convert`` (PIL strip -> uint8 (h, w, 3)) applied to horizontal strips of ``img``, each
    box-reduced by ``factor`` as it is made (strips are whole blocks of the reduction: the same pixels as reducing
    the whole converted image, without ever holding it)."""
    w, h = img.size
    fx, fy = factor
    out = Image.new("RGB", (-(-w // fx), -(-h // fy)))
    rows = max(1, _STRIP_PIXELS // w // fy) * fy
    for top in range(0, h, rows):
        strip = Image.fromarray(convert(img.crop((0, top, w, min(h, top + rows)))), "RGB")
        out.paste(strip.reduce(factor) if factor != (1, 1) else strip, (0, top // fy))
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


def _rgb(strip: Image.Image) -> np.ndarray:
    return np.asarray(strip.convert("RGB"))


def to_rgb(img: Image.Image, factor: tuple[int, int] = (1, 1)) -> Image.Image:
    """Any mode -> 8-bit RGB; transparency (alpha or tRNS) composited on black, 16/32-bit grey scaled to 8 bits;
    box-reduced by ``factor`` (what ``resize`` with a ``reducing_gap`` does first) as it is converted."""
    if "transparency" in img.info and img.mode in ("P", "RGB", "L", "1", "I", "I;16"):
        # a palette or colour key: PIL applies it when converting to an alpha mode (a copy, then strips)
        img = img.convert("LA" if img.mode in ("L", "1") else "RGBA")
    if img.mode == "RGB":
        return img.reduce(factor) if factor != (1, 1) else img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _strips(img, _on_black, factor)
    if img.mode.startswith("I"):  # 16-bit PNGs open as I;16 or I
        return _strips(img, _grey(257.0), factor)
    if img.mode == "F":
        return _strips(img, _grey(1.0), factor)
    return _strips(img, _rgb, factor)  # L, 1, CMYK, YCbCr, P without transparency


def crop_box(width: int, height: int) -> tuple[int, int, int, int] | None:
    """The centre square cut out before resizing, for an image more elongated than ``MAX_ASPECT``; else None."""
    if max(width, height) <= MAX_ASPECT * min(width, height):
        return None
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def preprocess(img: Image.Image, size: int, release: bool = False, content_size: int | None = None) -> np.ndarray:
    """The model's input (size, size, 3) uint8: RGB, shorter side to ``size`` (bicubic, antialiased), centre crop.
    ``release``: ``img`` is closed (its pixels freed) as soon as a converted copy exists (the caller is done).
    ``content_size`` (< ``size``): an image not already ``size`` x ``size`` is fitted to ``content_size`` and
    centred on black (the module's docstring says why)."""
    if content_size is not None and content_size < size and img.size != (size, size):
        margin = (size - content_size) // 2
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        canvas[margin : margin + content_size, margin : margin + content_size] = preprocess(img, content_size, release)
        return canvas
    source = img
    box = crop_box(*img.size)
    if box is not None:  # before the conversion too: only the square is converted
        img = img.crop(box)
    w, h = img.size
    if min(w, h) != size:
        if w <= h:
            new_w, new_h = size, max(size, int(size * h / w))
        else:
            new_w, new_h = max(size, int(size * w / h)), size
        # PIL's resize(reducing_gap=3) in two steps: the box reduction is done while converting (so a large image
        # is never held twice), then the bicubic resize of the reduced image, exactly as PIL would
        factor = (int(w / new_w / _REDUCING_GAP) or 1, int(h / new_h / _REDUCING_GAP) or 1)
        img = to_rgb(img, factor)
        if release and img is not source:
            source.close()
        area = (0.0, 0.0, w / factor[0], h / factor[1])
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, box=area)
    else:
        img = to_rgb(img)
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
