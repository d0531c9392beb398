"""Hybrid fusion with BM25 chosen on dev: the weighted sum, RRF, the significance guard, bad runs."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.common.errors import DataError
from pipeline.common.metrics import write_trec_run
from pipeline.data.beir import load_prepared
from pipeline.data.prepare import prepare_dataset
from pipeline.data.tiny import write_beir
from pipeline.retrieval.fusion import check_same_corpus, check_same_queries, choose, fuse, significance
from stages.cli import main

# ---------------------------------------------------------------- fusion


def runs_where_bm25_knows(n=30, docs=40, seed=0):
    """BM25 ranks each query's relevant doc first; the dense run is noise: dev must leave BM25 alone."""
    rng = np.random.default_rng(seed)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(n)}
    bm25 = {f"q{i}": {f"d{j}": float(rng.random() + 5 * (j == i)) for j in range(docs)} for i in range(n)}
    dense = {f"q{i}": {f"d{j}": float(rng.random()) for j in range(docs)} for i in range(n)}
    return qrels, dense, bm25


def test_dev_chooses_bm25_alone_when_the_dense_run_is_noise():
    qrels, dense, bm25 = runs_where_bm25_knows()
    choice = choose(dense, bm25, qrels, "wsum", "tiny/dev")
    assert choice.dense_weight == 0.0 and choice.dev_fused == pytest.approx(1.0)
    assert choice.dev_dense < 0.5 and choice.tuned_on == "tiny/dev"


def test_dev_gives_the_dense_run_weight_when_it_knows_what_bm25_misses():
    qrels, _, bm25 = runs_where_bm25_knows()
    half = {q: d for q, d in list(qrels.items())[:15]}
    # BM25 finds the first half, the dense run the second half: only a mix finds both
    bm25 = {q: {d: (s if q in half else s % 1) for d, s in docs.items()} for q, docs in bm25.items()}
    dense = {q: {d: (0.9 if (q not in half and d == f"d{q[1:]}") else 0.1 + 0.001 * int(d[1:]))
                 for d in docs} for q, docs in bm25.items()}
    choice = choose(dense, bm25, qrels, "wsum", "tiny/dev", max_p=0.05)
    assert 0 < choice.dense_weight < 1 and not choice.guarded and choice.dev_p < 0.05
    assert choice.dev_fused > max(choice.dev_dense, choice.dev_bm25)


def test_a_dev_gain_within_noise_leaves_bm25_alone():
    qrels, dense, bm25 = runs_where_bm25_knows()
    bm25["q0"]["d0"] -= 5  # BM25 misses one query's document; the dense run finds that one and nothing else
    dense["q0"]["d0"] = 2.0
    unguarded = choose(dense, bm25, qrels, "wsum", "tiny/dev", max_p=1.0)  # 1: the best weight, whatever its evidence
    assert unguarded.dense_weight > 0 and unguarded.dev_fused > unguarded.dev_bm25 and unguarded.dev_p > 0.05
    guarded = choose(dense, bm25, qrels, "wsum", "tiny/dev", max_p=0.05)
    assert guarded.dense_weight == 0.0 and guarded.guarded and guarded.dev_p == unguarded.dev_p
    assert guarded.dev_fused == pytest.approx(guarded.dev_bm25)
    rrf = choose(dense, bm25, qrels, "rrf", "tiny/dev", max_p=0.05)  # RRF has no weight to fall back on
    assert rrf.rrf_k is not None and not rrf.guarded


def test_weighted_sum_is_the_convex_combination_of_min_max_scores():
    dense = {"q": {"a": 1.0, "b": 0.5, "c": 0.0}}
    bm25 = {"q": {"a": 0.0, "b": 10.0, "c": 20.0}}
    fused = fuse(dense, bm25, "wsum", 0.3)["q"]
    # min-max: dense a=1, b=.5, c=0; bm25 a=0, b=.5, c=1 -> a .3, b .5, c .7
    assert fused == pytest.approx({"a": 0.3, "b": 0.5, "c": 0.7})
    # RRF: a is 1st and 3rd, b 2nd twice, c 3rd and 1st
    rrf = fuse(dense, bm25, "rrf", rrf_k=60)["q"]
    assert rrf == pytest.approx({"a": 1 / 61 + 1 / 63, "b": 2 / 62, "c": 1 / 63 + 1 / 61})


def test_weight_0_or_1_is_one_run_alone_in_its_own_order():
    dense = {"q": {"a": 0.9, "b": 0.8, "c": 0.7}, "r": {"a": 0.5}}
    bm25 = {"q": {"c": 9.0, "d": 3.0}}  # "d" is BM25's last (min-max 0), as low as the dense-only "a" and "b"
    assert list(fuse(dense, bm25, "wsum", 0.0)["q"]) == ["c", "d"]
    assert list(fuse(dense, bm25, "wsum", 1.0)["q"]) == ["a", "b", "c"]
    assert list(fuse(dense, bm25, "wsum", 0.0)["r"]) == ["a"]  # a query BM25 found nothing for: the dense run's


def test_runs_of_different_sets_or_splits_are_refused():
    with pytest.raises(DataError, match="different queries"):
        check_same_queries({"q1": {"a": 1.0}}, {"q2": {"a": 1.0}}, "fuse")
    check_same_queries({"q1": {"a": 1.0}, "q2": {"a": 1.0}}, {"q1": {"a": 2.0}}, "fuse")  # BM25 found nothing for q2
    with pytest.raises(DataError, match="different corpora"):
        check_same_corpus({"q1": {"a": 1.0}}, {"q1": {"z": 1.0}}, "fuse")
    assert fuse({"q1": {"a": 1.0}}, {"q1": {"z": 1.0}}, "wsum", 0.5)["q1"] == {"a": 0.5, "z": 0.5}  # one question


def test_significance_marks_a_real_gain_and_not_a_tie():
    qrels, dense, bm25 = runs_where_bm25_knows()
    out = significance(qrels, {"bm25": bm25, "noise": dense, "same": dict(bm25)})
    assert out["noise"]["delta"] < -0.5 and out["noise"]["significant"]
    assert out["same"]["delta"] == 0 and not out["same"]["significant"]


def test_lmort_fuse_refuses_runs_of_another_split(tmp_path, monkeypatch):
    beir = write_beir(tmp_path / "tiny")
    monkeypatch.setenv("LMORT_DATA", str(tmp_path))
    monkeypatch.setenv("LMORT_CACHE", str(tmp_path / "cache"))
    prepare_dataset(str(beir), tmp_path / "cache" / "data" / "tiny")
    ds = load_prepared(tmp_path / "cache" / "data" / "tiny")
    test_q, dev_q = list(ds.qrels["test"]), list(ds.qrels["dev"])
    runs, dev = tmp_path / "runs", tmp_path / "dev"
    for system in ("bm25", "lmort"):
        # the "test" runs hold the dev queries: runs of another split
        write_trec_run({q: {"d1": 1.0, "d2": 0.5} for q in dev_q}, runs / "tiny" / "test" / f"{system}.trec", system)
        write_trec_run({q: {"d1": 1.0, "d2": 0.5} for q in dev_q}, dev / "tiny" / "dev" / f"{system}.trec", system)
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"eval_sets": ["tiny"], "train_sets": "tiny", "eval_split": "test",
                                  "fusion": {"variants": ["lmort"], "dev_split": "dev"}}))
    r = CliRunner().invoke(main, ["fuse", "--params", str(params), "--runs", str(runs), "--dev-runs", str(dev),
                                  "--out", str(tmp_path / "fusion")])
    assert r.exit_code != 0 and test_q and "test" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "fusion" / "fusion.json").exists()
