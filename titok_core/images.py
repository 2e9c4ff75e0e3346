"""The reference preprocessing: any image -> the model's (size, size, 3) uint8 RGB input.

Training and serving both call it, so a model sees the same pixels in both: any mode becomes 8-bit RGB, with
transparency composited on **black** (Fashion-MNIST's background, so a cut-out object looks like the training data);
16-bit grey is scaled to 8 bits; the shorter side is resized to the model's size with bicubic filtering (PIL widens
the kernel when shrinking, i.e. antialiased) and the centre square is cropped, as torchvision's ``Resize(size)`` +
``CenterCrop(size)``.
"""

import numpy as np
from PIL import Image


def _on_black(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB; transparency composited on black, 16/32-bit grey scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        return _on_black(img) if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_black(img)
    if img.mode.startswith("I"):  # 16-bit PNGs open as I;16 or I
        grey = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """The model's input (size, size, 3) uint8: RGB, shorter side to ``size`` (bicubic, antialiased), centre crop."""
    img = to_rgb(img)
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
