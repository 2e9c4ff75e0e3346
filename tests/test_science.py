"""The science tables and plot, from evaluation JSON files written here (so re-running the evaluations that docs/
ships changes nothing in this test)."""

import json
from pathlib import Path

import pytest
from PIL import Image

from training import science

# (layout, token count, recipe, psnr, ssim, rfid, probe accuracy, used fraction)
EVALUATIONS = {
    "1d-32": ("1D", 32, "single-stage", 21.5, 0.81, 6.25, 0.75, 0.875),
    "1d-64": ("1D", 64, "single-stage", 24.125, 0.86, 3.5, 0.8, 1.0),
    "2d-64": ("2D", 64, "single-stage", 25.44, 0.887, 2.8, 0.8125, 1.0),
}


def write_evaluation(path: Path, layout: str, tokens: int, recipe: str, *metrics: float, kind: str = "titok") -> Path:
    """An evaluation JSON of the shape ``python -m training evaluate`` writes (the fields science reads)."""
    psnr, ssim, rfid, probe, used = metrics
    rec = {"kind": kind, "layout": layout, "num_tokens": tokens, "recipe": recipe}
    rec |= {"psnr": psnr, "ssim": ssim, "rfid": rfid, "codebook_usage": {"used_fraction": used}}
    doc = {"reconstruction": {"tokenizer": rec}, "linear_probe": {"accuracy": probe}}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def files(tmp_path) -> list[Path]:
    return [write_evaluation(tmp_path / f"{name}.json", *values) for name, values in EVALUATIONS.items()]


def test_load_reads_layout_count_head_and_metrics(files):
    one, two = science.load(files[1]), science.load(files[2])
    assert (one.layout, one.tokens, one.recipe) == ("1D", 64, "single-stage")
    assert (two.layout, two.tokens, two.recipe) == ("2D", 64, "single-stage")
    *_, psnr, ssim, rfid, probe, used = EVALUATIONS["2d-64"]
    assert (two.psnr, two.ssim, two.rfid, two.probe, two.codebook_used) == (psnr, ssim, rfid, probe, used)


def test_tables_group_by_token_count_layout_and_recipe(files, tmp_path):
    tokenizers = [science.load(p) for p in files]
    budget = science.token_budget(tokenizers).splitlines()
    assert [row.split("|")[1].strip() for row in budget[2:]] == ["32", "64"]  # 1D only, by token count
    pairs = science.one_vs_two_d(tokenizers).splitlines()
    assert [row.split("|")[2].strip() for row in pairs[2:]] == ["1D", "2D"]  # only 64 has both layouts
    # a two-stage twin of the 32-token tokenizer: single- and two-stage rows at 32 tokens
    _, _, _, *metrics = EVALUATIONS["1d-32"]
    two = write_evaluation(tmp_path / "two.json", "1D", 32, "two-stage", *metrics)
    stages = science.one_vs_two_stage([*tokenizers, science.load(two)]).splitlines()
    assert [row.split("|")[2].strip() for row in stages[2:]] == ["single-stage", "two-stage (proxy codes)"]


def test_main_prints_tables_and_writes_the_plot(files, tmp_path, capsys):
    out = tmp_path / "budget.png"
    assert science.main([*map(str, files), "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    *_, psnr, ssim, rfid, probe, used = EVALUATIONS["2d-64"]
    assert f"| 64 | 2D | {psnr:.2f} | {ssim:.3f} | {rfid:.2f} | {probe:.1%} | {used:.1%} |" in text
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 800


def test_a_file_that_is_not_a_tokenizer_evaluation_is_refused(tmp_path):
    bad = write_evaluation(tmp_path / "bad.json", *EVALUATIONS["1d-32"], kind="vqgan")
    with pytest.raises(ValueError, match="not a TiTok evaluation"):
        science.load(bad)
