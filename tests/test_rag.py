"""`lmort rag`: answer quality per system, chosen on dev, compared with BM25 question by question."""

import json

import pytest
from click.testing import CliRunner

from pipeline.common.errors import DataError
from pipeline.common.metrics import write_trec_run
from stages.cli import main


def test_lmort_rag_chooses_on_dev_and_scores_every_system_on_the_same_test_questions(memory_world, tmp_path,
                                                                                      monkeypatch):
    from pipeline.retrieval.baselines import bm25_run

    ds = memory_world["ds"]
    beir = memory_world["root"] / "tiny"
    # every question's answer: the first word of its relevant document
    answers = {q: [ds.corpus[d]["text"].split()[0]] for split in ds.qrels.values() for q, docs in split.items()
               for d in docs}
    (beir / "answers.jsonl").write_text("".join(json.dumps({"_id": q, "answers": a}) + "\n"
                                                for q, a in answers.items()))
    runs = tmp_path / "runs"
    for split in ("test", "dev"):
        write_trec_run(bm25_run(ds, list(ds.qrels[split])), runs / ds.name / split / "bm25.trec", "bm25")
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({
        "model": memory_world["model"], "eval_split": "test", "fusion": {"dev_split": "dev"},
        "extract": {"compute_dtype": "float32", "case": "keep", "query_template": "{text}"},
        "rag": {"sets": [str(memory_world["root"] / "prepared")], "questions": 4, "dev_questions": 3, "seed": 0,
                "systems": ["closed-book", "bm25", "oracle"], "orders": ["question-first", "passages-first"],
                "ks": [1, 2], "max_new_tokens": 3, "batch_size": 2, "timing_questions": 2, "prompts": ["plain"]}}))
    args = ["rag", "--params", str(params), "--runs", str(runs), "--dev-runs", str(runs), "--index-root",
            str(tmp_path / "none"), "--answers", str(beir / "answers.jsonl"), "--out", str(tmp_path / "rag")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "rag" / "rag.json").read_text())[ds.name]
    assert len(out["choices"]) == 4 and out["choice"] == max(out["choices"], key=lambda c: c["dev F1"])
    rows = {row["system"]: row for row in out["rows"]}
    assert set(rows) == {"closed-book", "bm25", "oracle"} and out["questions"] == 4
    assert {row["reader"] for row in out["rows"]} == {"generate"}  # no span reader was trained here
    assert rows["oracle"]["recall@k"] == 1.0 and rows["closed-book"]["recall@k"] is None
    assert rows["bm25"]["retrieve ms/q"] > 0 and rows["closed-book"]["retrieve ms/q"] is None
    assert rows["bm25"]["read ms/q"] > 0
    assert rows["bm25"]["F1 minus oracle"] == pytest.approx(rows["bm25"]["F1"] - rows["oracle"]["F1"])
    assert rows["oracle"]["F1 minus bm25"] == pytest.approx(rows["oracle"]["F1"] - rows["bm25"]["F1"])
    assert "p" in rows["oracle"] and "F1 minus bm25" not in rows["bm25"]  # the paired test is against BM25
    predictions = json.loads((tmp_path / "rag" / "predictions.json").read_text())[ds.name]
    assert set(predictions) == {"closed-book generate", "bm25 generate", "oracle generate"}
    assert all(len(p) == 4 for p in predictions.values())
    assert (tmp_path / "rag" / f"rag-{ds.name}.png").stat().st_size > 0
    # a missing answers file: one line, non-zero, nothing written
    r = CliRunner().invoke(main, [*args[:-4], "--answers", str(tmp_path / "nope.jsonl"), "--out",
                                  str(tmp_path / "rag2")])
    assert r.exit_code != 0 and "no answers file" in r.output and not (tmp_path / "rag2").exists()


def test_answer_f1_is_compared_with_bm25_question_by_question():
    from pipeline.answers.rag import with_gaps

    bm25 = {f"q{i}": 0.5 for i in range(8)}
    better = {q: f + 0.25 + 0.01 * i for i, (q, f) in enumerate(bm25.items())}  # +0.25 on every question
    rows = with_gaps([{"system": "bm25", "F1": 0.5}, {"system": "lmort", "F1": 0.785}],
                     {"bm25": bm25, "lmort": better})
    assert rows[1]["F1 minus bm25"] == pytest.approx(0.285) and float(rows[1]["p"]) < 1e-6
    assert rows[0]["F1 minus oracle"] is None and "p" not in rows[0]


def test_timing_a_fused_system_needs_its_dev_chosen_weight(memory_world):
    """A fused system is timed with the weight `lmort fuse` chose on dev; without one it refuses, never guesses."""
    from pipeline.answers.rag import time_retrieval

    ds = memory_world["ds"]
    with pytest.raises(DataError, match="no dev-chosen fusion weight"):
        time_retrieval("lmort+bm25", ["a question"], ds, {}, {"pooled-linear+bm25": {"dense_weight": 0.3}})
    assert time_retrieval("bm25", ["a question"], ds, {}, {}) > 0
