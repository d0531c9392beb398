import json

import pytest
from click.testing import CliRunner

from pipeline.tuner.analyze import analyze, sample_pairs
from stages.cli import main


def test_analyze_writes_curves_choice_and_verdict(tiny_model, prepared, tmp_path):
    out = tmp_path / "geo"
    result = analyze(tiny_model, [prepared], out, max_pairs=10, eval_dataset=prepared, eval_split="test")
    saved = json.loads((out / "geometry.json").read_text())
    assert saved["pairs"] == 10 and len(saved["alignment"]) == len(saved["uniformity"]) == 4  # layers 0..3
    assert saved["a_layer"] == min(range(4), key=saved["alignment"].__getitem__)
    assert saved["u_layer"] == min(range(4), key=saved["uniformity"].__getitem__)
    assert saved["verdict"] and (out / "geometry.png").stat().st_size > 5000
    per_layer = result["zero_shot_ndcg10"]["per_layer"]
    assert len(per_layer) == 4
    # the eval scores are reporting only: without them the analysis picks the same layers from the same numbers
    alone = analyze(tiny_model, [prepared], tmp_path / "alone", max_pairs=10)
    assert (alone["a_layer"], alone["u_layer"]) == (saved["a_layer"], saved["u_layer"])
    assert alone["alignment"] == saved["alignment"] and alone["uniformity"] == saved["uniformity"]
    assert "zero_shot_ndcg10" not in alone
    assert "| layer | alignment | uniformity | chosen | raw nDCG@10 |" in (out / "geometry.md").read_text()


def test_analysis_never_reads_a_test_split(prepared):
    with pytest.raises(ValueError, match="never reads a test split"):
        sample_pairs([prepared], "test", 10, 0)


def test_analyze_command_prints_the_table(tiny_model, prepared, tmp_path):
    r = CliRunner().invoke(main, ["analyze", "--model", tiny_model, "--data", str(prepared.folder),
                                  "--out", str(tmp_path / "g"), "--max-pairs", "8"])
    assert r.exit_code == 0, r.output
    assert "| layer | alignment | uniformity | chosen |" in r.output
    saved = json.loads((tmp_path / "g" / "geometry.json").read_text())
    assert f"A-layer {saved['a_layer']}, U-layer {saved['u_layer']}; 8 pairs" in r.output  # what it chose, printed
