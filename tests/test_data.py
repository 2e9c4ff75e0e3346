"""Tests for training/data.py: Fashion-MNIST IDX parsing, image folders and the shared preprocessing."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    FASHION_MNIST_CLASSES,
    DatasetCorruptError,
    DatasetNotFoundError,
    ImageFolder,
    ImageTensorDataset,
    build_dataset,
    load_fashion_mnist,
    resize_center_crop,
)

# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST (the installed Debian package)
# ---------------------------------------------------------------------------------------------------


def test_train_images_are_padded_grey_rgb():
    images, labels = load_fashion_mnist("train", limit=200)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (200,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < len(FASHION_MNIST_CLASSES) == 10
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert images[:, :, border].max() == 0  # the 2-pixel frame is black
    assert images[:, :, 2:30, 2:30].float().mean() > 20  # and the garments are not
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first training labels


def test_test_split_is_full_and_balanced():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 3, 32, 32)
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10
    first, _ = load_fashion_mnist("test", limit=5)
    assert torch.equal(first, images[:5])


def test_results_are_independent_copies():
    a, _ = load_fashion_mnist("test", limit=2)
    a.zero_()  # must not poison the in-process cache
    b, _ = load_fashion_mnist("test", limit=2)
    assert b.max() > 0


def test_bad_split_raises():
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val")


def test_missing_root_says_how_to_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load_fashion_mnist("train", root=missing)
    assert isinstance(err.value, FileNotFoundError)
    assert str(missing) in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        load_fashion_mnist("train", root=tmp_path)


def _write_idx(path, magic: int, array: np.ndarray, compress: bool = True) -> None:
    """Write an IDX file: big-endian magic, big-endian dims, raw uint8 data."""
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _fake_root(tmp_path, n: int = 3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 0x801, labels, compress=False)  # uncompressed works too
    return images, labels


def test_custom_root_round_trip(tmp_path):
    raw_images, raw_labels = _fake_root(tmp_path)
    images, labels = load_fashion_mnist("test", root=tmp_path)
    assert torch.equal(images[:, 1, 2:30, 2:30], torch.from_numpy(raw_images))
    assert labels.tolist() == raw_labels.tolist()


def test_wrong_magic_is_reported(tmp_path):
    _fake_root(tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x801, np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DatasetCorruptError, match="magic"):
        load_fashion_mnist("test", root=tmp_path)


def test_short_data_is_reported(tmp_path):
    _fake_root(tmp_path)
    raw = struct.pack(">IIII", 0x803, 3, 28, 28) + bytes(2 * 28 * 28)  # header says 3 images, data holds 2
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DatasetCorruptError, match="needs"):
        load_fashion_mnist("test", root=tmp_path)


def test_truncated_gzip_is_reported(tmp_path):
    _fake_root(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])  # an interrupted download
    with pytest.raises(DatasetCorruptError, match="cannot read"):
        load_fashion_mnist("test", root=tmp_path)


def test_build_dataset_fashion_mnist():
    ds = build_dataset("fashion-mnist", "test", limit=8)
    assert isinstance(ds, ImageTensorDataset) and len(ds) == 8
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert ds.classes == FASHION_MNIST_CLASSES
    with pytest.raises(ValueError, match="image_size"):
        build_dataset("fashion-mnist", "test", image_size=64)


# ---------------------------------------------------------------------------------------------------
# Image folders and preprocessing
# ---------------------------------------------------------------------------------------------------


def _image_tree(root):
    """root/coat/{a.png RGBA, b.JPG L}, root/shirt/{c.png P, sub/d.webp RGB, e.bmp RGB}, plus a non-image."""
    (root / "coat").mkdir(parents=True)
    (root / "shirt" / "sub").mkdir(parents=True)
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(root / "coat" / "a.png")  # fully transparent
    Image.new("L", (20, 50), 200).save(root / "coat" / "b.JPG")
    Image.new("RGB", (33, 33), (0, 255, 0)).convert("P").save(root / "shirt" / "c.png")
    Image.new("RGB", (64, 48), (0, 0, 255)).save(root / "shirt" / "sub" / "d.webp")
    Image.new("RGB", (17, 17), (9, 9, 9)).save(root / "shirt" / "e.bmp")
    (root / "shirt" / "notes.txt").write_text("not an image")


def test_image_folder_sizes_and_labels(tmp_path):
    _image_tree(tmp_path)
    ds = ImageFolder(tmp_path, image_size=16)
    assert ds.classes == ("coat", "shirt") and ds.class_to_idx == {"coat": 0, "shirt": 1}
    assert len(ds) == 5
    items = [ds[i] for i in range(len(ds))]
    assert all(img.shape == (3, 16, 16) and img.dtype == torch.uint8 for img, _ in items)
    assert [label for _, label in items] == [0, 0, 1, 1, 1]
    assert items[0][0].max() == 0  # transparent RGBA is composited on black
    assert torch.all((items[1][0].int() - 200).abs() <= 2)  # grey L -> equal RGB channels (JPEG tolerance)
    assert items[2][0][1].min() > 240 and items[2][0][0].max() < 15  # palette green stays green


def test_image_folder_limit_spans_classes(tmp_path):
    _image_tree(tmp_path)
    ds = ImageFolder(tmp_path, image_size=8, limit=2)
    assert [label for _, label in ds.samples] == [0, 1]


def test_image_folder_missing_or_empty(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="not found"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "coat").mkdir()
    (tmp_path / "coat" / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no images"):
        ImageFolder(tmp_path)


def test_build_dataset_prefers_split_subfolder(tmp_path):
    _image_tree(tmp_path / "train")
    assert isinstance(build_dataset(str(tmp_path), "train", image_size=8), ImageFolder)
    assert len(build_dataset(str(tmp_path), "train", image_size=8)) == 5
    # no test/ subfolder: the path itself is the dataset (here: class folders "train" and nothing else)
    assert build_dataset(str(tmp_path), "test", image_size=8).classes == ("train",)


def test_resize_center_crop_shapes_and_centre():
    img = Image.new("RGB", (50, 20), (255, 0, 0))
    out = resize_center_crop(img, 16)
    assert out.size == (16, 16) and out.mode == "RGB"
    # thirds red / green / blue: the centre crop of a 3:1 image keeps only the green third
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20, 0] = wide[:, 20:40, 1] = wide[:, 40:, 2] = 255
    centre = np.asarray(resize_center_crop(Image.fromarray(wide), 10)).astype(int)
    assert centre.shape == (10, 10, 3)
    assert centre[2:-2, 2:-2, 1].min() > 240 and centre[2:-2, 2:-2, [0, 2]].max() < 15


def test_resize_center_crop_odd_modes():
    grey16 = Image.fromarray(np.full((10, 30), 65535, dtype=np.uint16))
    assert np.asarray(resize_center_crop(grey16, 8)).min() == 255  # 16-bit white stays white
    la = Image.new("LA", (12, 12), (255, 128))
    assert np.asarray(resize_center_crop(la, 12)).max() in (127, 128)  # half alpha on black
    cmyk = Image.new("CMYK", (12, 12), (0, 0, 0, 0))
    assert np.asarray(resize_center_crop(cmyk, 12)).min() == 255
