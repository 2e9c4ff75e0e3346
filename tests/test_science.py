"""The science tables and plot, from the evaluation JSON files the repository ships in docs/."""

import json
from pathlib import Path

import pytest
from PIL import Image

from training import science

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHIPPED = [DOCS / "results-tokenizer.json", DOCS / "results-1d-64.json", DOCS / "results-2d-64.json"]


def test_load_reads_layout_count_head_and_metrics():
    one, two = science.load(SHIPPED[1]), science.load(SHIPPED[2])
    assert (one.layout, one.tokens, one.recipe) == ("1D", 64, "single-stage")
    assert (two.layout, two.tokens, two.recipe) == ("2D", 64, "single-stage")
    raw = json.loads(SHIPPED[2].read_text())
    assert two.psnr == raw["reconstruction"]["tokenizer"]["psnr"]
    assert two.probe == raw["linear_probe"]["accuracy"]


def test_tables_group_by_token_count_layout_and_recipe(tmp_path):
    tokenizers = [science.load(p) for p in SHIPPED]
    budget = science.token_budget(tokenizers).splitlines()
    assert [row.split("|")[1].strip() for row in budget[2:]] == ["32", "64"]  # 1D only, by token count
    pairs = science.one_vs_two_d(tokenizers).splitlines()
    assert [row.split("|")[2].strip() for row in pairs[2:]] == ["1D", "2D"]  # only 64 has both layouts
    # a two-stage twin of the 32-token tokenizer: single- and two-stage rows at 32 tokens
    raw = json.loads(SHIPPED[0].read_text())
    raw["reconstruction"]["tokenizer"]["recipe"] = "two-stage"
    (tmp_path / "two.json").write_text(json.dumps(raw))
    stages = science.one_vs_two_stage([*tokenizers, science.load(tmp_path / "two.json")]).splitlines()
    assert [row.split("|")[2].strip() for row in stages[2:]] == ["single-stage", "two-stage (proxy codes)"]


def test_main_prints_tables_and_writes_the_plot(tmp_path, capsys):
    out = tmp_path / "budget.png"
    assert science.main([*map(str, SHIPPED), "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 64 | 2D | 25.44 |" in text
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 800


def test_a_file_that_is_not_a_tokenizer_evaluation_is_refused(tmp_path):
    raw = json.loads(SHIPPED[0].read_text())
    raw["reconstruction"]["tokenizer"]["kind"] = "vqgan"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="not a TiTok evaluation"):
        science.load(tmp_path / "bad.json")
