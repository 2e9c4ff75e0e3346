"""Datasets: Fashion-MNIST from its IDX files, ImageNet-style image folders, and the shared preprocessing."""

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from titok_core.images import preprocess

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SIDE = 28  # the files' images; training centres them on a black 32x32 canvas
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims (N, rows, cols)
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim (N,)
_FMNIST_HINT = "run `apt-get install dataset-fashion-mnist`, or pass root=<folder holding the *-ubyte.gz files>"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset path is missing or holds no usable data; the message says which path and how to fix it."""

    def __init__(self, path: str | Path, problem: str, hint: str):
        self.path = Path(path)
        super().__init__(f"{problem}: {self.path}. To fix: {hint}.")


class DatasetCorruptError(ValueError):
    """A dataset file exists but cannot be parsed (truncated download, wrong file, bad magic number)."""


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _read_idx(path: str, magic: int) -> np.ndarray:
    """Parse one (optionally gzipped) IDX file into a read-only uint8 array; cached per path."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a truncated gzip stream raises EOFError, a bad header OSError
        raise DatasetCorruptError(f"cannot read IDX file {path}: {e}") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetCorruptError(f"IDX file {path} is truncated ({len(raw)} bytes, header needs {header})")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetCorruptError(f"IDX file {path} has magic number {found:#010x}, expected {magic:#010x}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetCorruptError(
            f"IDX file {path} holds {len(raw) - header} data bytes, but its header {shape} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    array.flags.writeable = False  # shared by every caller through the cache
    return array


def _idx_path(root: Path, stem: str) -> Path:
    """The gzipped IDX file under root, or its uncompressed twin; DatasetNotFoundError if neither exists."""
    if not root.is_dir():
        raise DatasetNotFoundError(root, "Fashion-MNIST directory not found", _FMNIST_HINT)
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetNotFoundError(root / f"{stem}.gz", "Fashion-MNIST file not found", _FMNIST_HINT)


def load_fashion_mnist(
    split: str = "train", root: str | Path = FASHION_MNIST_DIR, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as uint8 (N, 3, 32, 32) and int64 (N,): 28x28 padded by 2 black pixels, grey -> RGB."""
    images, labels = read_fashion_mnist(split, root, limit)
    m = (32 - FASHION_MNIST_SIDE) // 2
    padded = np.zeros((len(images), 32, 32), dtype=np.uint8)  # (N, 32, 32), black border
    padded[:, m : m + FASHION_MNIST_SIDE, m : m + FASHION_MNIST_SIDE] = images
    out = torch.from_numpy(padded).unsqueeze(1).repeat(1, 3, 1, 1)  # (N, 3, 32, 32), a fresh copy
    return out, torch.from_numpy(labels.astype(np.int64))


def read_fashion_mnist(
    split: str = "train", root: str | Path = FASHION_MNIST_DIR, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The IDX files as they are: grey uint8 (N, 28, 28) and uint8 labels (N,), checked."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    root = Path(root)
    images = _read_idx(str(_idx_path(root, f"{prefix}-images-idx3-ubyte")), _IDX_IMAGES_MAGIC)
    labels = _read_idx(str(_idx_path(root, f"{prefix}-labels-idx1-ubyte")), _IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetCorruptError(f"{split}: {len(images)} images but {len(labels)} labels under {root}")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetCorruptError(f"{split}: label {labels.max()} out of range under {root}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]  # slice before padding: cheap for small limits
    return images, labels


# ---------------------------------------------------------------------------------------------------
# Preprocessing shared with the gateway (PIL + numpy only)
# ---------------------------------------------------------------------------------------------------


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Reference preprocessing: to RGB, shorter side -> size (bicubic, antialiased), centred size x size crop.

    One implementation for training and serving: the gateway's (``titok_core.images.preprocess``, torch-free, since
    the gateway cannot import ``training``). Transparency is composited on black, Fashion-MNIST's background.
    """
    return Image.fromarray(preprocess(img, size))


def pil_to_uint8_chw(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------


class ImageTensorDataset(Dataset):
    """In-memory dataset over uint8 images (N, 3, H, W) and labels (N,); items are (image, int label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...] = ()):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"want uint8 (N, C, H, W) images, N labels; got {images.shape} {images.dtype}")
        self.images, self.labels, self.classes = images, labels, tuple(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class ImageFolder(Dataset):
    """ImageNet-style folder root/<class_name>/**/<image>; sorted class names give the label ids."""

    def __init__(self, root: str | Path, image_size: int = 32, limit: int | None = None):
        self.root, self.image_size = Path(root), image_size
        hint = "point it at a folder laid out as <root>/<class_name>/<image files>"
        if not self.root.is_dir():
            raise DatasetNotFoundError(self.root, "image folder not found", hint)
        subdirs = (p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = tuple(sorted(subdirs))
        if not self.classes:
            raise DatasetNotFoundError(self.root, "image folder has no class sub-folders", hint)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((self.root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not path.name.startswith(".")
        ]
        if not self.samples:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetNotFoundError(self.root, f"image folder has no images ({exts})", hint)
        if limit is not None and limit < len(self.samples):
            # evenly spaced rather than the first `limit`, which would all come from the first classes
            keep = np.unique(np.linspace(0, len(self.samples) - 1, max(limit, 0)).round().astype(int))
            self.samples = [self.samples[i] for i in keep]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            img.load()
            return pil_to_uint8_chw(resize_center_crop(img, self.image_size)), label  # (3, size, size)


def content_size(data: str | None) -> int | None:
    """The side of the centred square the data set's image content fills, when smaller than the model's input
    (Fashion-MNIST: 28x28 on the black 32x32 canvas of ``load_fashion_mnist``); None when the images fill it."""
    return FASHION_MNIST_SIDE if (data or "").lower() in ("fashion-mnist", "fashion_mnist") else None


def build_dataset(name_or_path: str, split: str, image_size: int = 32, limit: int | None = None) -> Dataset:
    """'fashion-mnist' -> ImageTensorDataset of the IDX data; anything else is an image folder path."""
    if name_or_path.lower() in ("fashion-mnist", "fashion_mnist"):
        if image_size != 32:
            raise ValueError(f"Fashion-MNIST is 32x32 (28x28 padded), so image_size must be 32, not {image_size}")
        images, labels = load_fashion_mnist(split, limit=limit)
        return ImageTensorDataset(images, labels, FASHION_MNIST_CLASSES)
    root = Path(name_or_path)
    if (root / split).is_dir():
        root = root / split
    return ImageFolder(root, image_size=image_size, limit=limit)
