"""training/variations.py on the shipped models and real test images, at a small size: the table and the grids."""

import json

import numpy as np
import pytest
from PIL import Image

from training.variations import main, other_classes


def test_other_classes_are_never_the_image_own():
    labels = np.arange(100) % 10
    others = other_classes(labels, 10, seed=0)
    assert (others != labels).all() and set(others) == set(range(10))


@pytest.mark.slow  # three models and a classifier on 8 images: several seconds
def test_a_small_run_writes_its_table_and_a_grid_per_strength(tmp_path):
    result = main(["--num-images", "8", "--strengths", "0", "1", "--out-dir", str(tmp_path)])
    rows = {(r["strength"], r["target"]): r for r in result["rows"]}
    assert set(rows) == {(0.0, "same"), (0.0, "other"), (1.0, "same"), (1.0, "other")}
    # strength 0 is the reconstruction whatever the class; strength 1 a new image, further from the source
    assert rows[0.0, "same"]["psnr_db"] == rows[0.0, "other"]["psnr_db"] > rows[1.0, "other"]["psnr_db"]
    assert rows[0.0, "same"]["tokens"] == 0 and rows[1.0, "same"]["tokens"] == 32
    assert rows[0.0, "other"]["target_accuracy"] == 0.0
    assert rows[1.0, "other"]["feature_distance"] > rows[0.0, "other"]["feature_distance"]
    assert json.loads((tmp_path / "variations.json").read_text())["rows"] == result["rows"]
    for name in ("variations-0000.png", "variations-1000.png"):
        grid = Image.open(tmp_path / name)
        assert grid.mode == "L" and grid.size == (5 * 66 - 2, 6 * 66 - 2)  # 5 columns, 6 rows of 64 px cells
