"""Uploads: image decoding (safe against bombs and broken files) with its HTTP errors, and output encoding.

The preprocessing itself (``preprocess``) is the core's, shared with training.
"""

import base64
import binascii
import io
import struct
import warnings
import zlib
from typing import Any

import numpy as np
from PIL import Image

from titok_core.images import preprocess

from .errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# the magic bytes of the accepted formats, and of image formats that are recognised but refused (415)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ACCEPTED = ((_PNG_SIGNATURE, "PNG"), (b"\xff\xd8\xff", "JPEG"))
_REFUSED = (b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00", b"\x00\x00\x00\x0cjP")


def sniff(data: bytes) -> str | None:
    """PIL's format name of a PNG, JPEG or WebP by its magic bytes, else None."""
    for magic, fmt in _ACCEPTED:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_base64(text: str, param: str) -> bytes:
    """Bytes of a base64 string, with or without a ``data:image/...;base64,`` prefix (any case); whitespace and
    line breaks (RFC 2045) are ignored."""
    text = text.strip()
    if text[:5].lower() == "data:":
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImage(f"not valid base64: {e}", param) from None


def open_image(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """A PIL image whose header alone is read: its format is sniffed and its pixel count checked, no pixel decoded."""
    fmt = sniff(data)
    if fmt is None:
        if data.startswith(_REFUSED):
            raise UnsupportedMediaType("only PNG, JPEG and WebP images are accepted", param)
        raise InvalidImage("not a PNG, JPEG or WebP image", param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies
            img = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
            width, height = img.size
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"image is over the limit of {max_pixels} pixels", param) from None
    except Exception as e:  # an unreadable header is the input's fault
        raise InvalidImage(f"cannot decode the {fmt} image: {e}", param) from None
    _check_size(width, height, max_pixels, param)
    return img


def _check_size(width: int, height: int, max_pixels: int, param: str) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image of {width}x{height} pixels is over the limit of {max_pixels}", param)
    if width * height == 0:
        raise InvalidImage("image has no pixels", param)


# a decoded row costs memory of its own (PIL keeps a pointer and a 4-byte-aligned line per row): a row counts as at
# least this many pixels, so that a 1x16,777,216 strip is not as cheap as its pixel count says
ROW_COST_PIXELS = 8


def _png_size(data: bytes) -> tuple[int, int] | None:
    """A PNG's width and height from its IHDR, which the format puts first (PIL reads the same bytes, so the
    decoding that follows sees this size), without PIL's plugin and stream set-up: the cost check runs per image
    on the event loop. None for anything else, which PIL's own header reading then judges."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    return struct.unpack(">II", data[16:24])


def decoded_pixels(data: bytes, max_pixels: int, param: str) -> int:
    """What decoding an image costs, in pixels, from its header alone (413 over ``max_pixels``): its pixels, a row
    counted as at least ``ROW_COST_PIXELS`` wide; the preprocessing after it never makes more (an elongated image is
    cropped to its centre square before it is resized)."""
    size = _png_size(data)
    if size is None:
        width, height = open_image(data, max_pixels, param).size  # checked there
    else:
        width, height = size
        _check_size(width, height, max_pixels, param)
    cost = max(width, ROW_COST_PIXELS) * height
    if cost > max_pixels:
        message = f"image of {width}x{height} costs {cost} pixels to decode (a row as {ROW_COST_PIXELS} at least)"
        raise PayloadTooLarge(f"{message}, over the limit of {max_pixels}", param)
    return cost


def load_pixels(img: Image.Image, param: str) -> Image.Image:
    """Decode the pixels of an image from ``open_image``."""
    try:
        img.load()
    except Exception as e:  # any decoder failure (truncated, corrupt, bad chunk) is the input's fault
        raise InvalidImage(f"cannot decode the {img.format} image: {e}", param) from None
    return img


def decode_image(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """A fully loaded PIL image; its pixel count is checked from the header before any pixel is decoded."""
    return load_pixels(open_image(data, max_pixels, param), param)


def load_image(data: bytes, size: int, max_pixels: int, param: str, content_size: int | None = None) -> np.ndarray:
    """Encoded bytes -> the model's (size, size, 3) uint8 input (``content_size``: the family's content area,
    ``titok_core.images.preprocess``); the decoded pixels are released on return."""
    img = decode_image(data, max_pixels, param)
    try:
        return preprocess(img, size, release=True, content_size=content_size)
    finally:
        img.close()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png(array: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> an 8-bit RGB PNG, written here: PIL's writer costs ten times as much on a 32x32 image
    (plugin lookup, encoder set-up), which the event loop pays per generated image. Every row takes the Up filter
    (the difference to the row above, one numpy subtraction), then zlib at its fastest level."""
    rows = np.ascontiguousarray(array, dtype=np.uint8).reshape(array.shape[0], -1)
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as the filter is defined
    header = struct.pack(">IIBBBBB", array.shape[1], array.shape[0], 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1)),
            _png_chunk(b"IEND", b""),
        )
    )


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """(H, W, 3) uint8 -> PNG, JPEG (quality 95) or lossless WebP bytes; the same array gives the same bytes."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image is (H, W, 3), not {array.shape}")
    if fmt == "png":
        return encode_png(array)
    out = io.BytesIO()
    options: dict[str, dict[str, Any]] = {"jpeg": {"quality": 95}, "webp": {"lossless": True}}
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "RGB").save(out, FORMATS[fmt], **options[fmt])
    return out.getvalue()
