"""One retriever interface: `search(queries, k) -> run` for BM25, a dense index with its encoder, a tuner's index
opened from its folder, and a fused pair; the baselines' registry."""

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.data.bm25 import BM25
from pipeline.retrieval.fusion import FusedRetriever, fuse
from pipeline.retrieval.index import build_index
from pipeline.retrieval.retrievers import DenseRetriever
from stages.cli import main

CORPUS = {f"d{i}": {"title": "", "text": t} for i, t in enumerate([
    "the cat sat on the mat", "dogs chase cats in the park", "stock markets fell sharply today",
    "a kitten sleeps on a rug", "the central bank raised interest rates", "cats and kittens purr"])}


def dense_world(seed: int = 0):
    """A dense retriever whose encoder maps each text to a fixed random vector (the same text, the same vector)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(CORPUS), 8)).astype(np.float32)
    table: dict[str, np.ndarray] = {}

    def encode(texts):
        return np.stack([table.setdefault(t, rng.standard_normal(8).astype(np.float32)) for t in texts])
    return DenseRetriever("dense", build_index(vectors), list(CORPUS), encode), vectors, encode


def test_a_dense_retriever_ranks_by_inner_product_and_takes_vectors_already_encoded():
    dense, vectors, encode = dense_world()
    queries = {"q1": "cats", "q2": "rates"}
    run = dense.search(queries, k=3)
    for q, text in queries.items():
        scores = vectors @ encode([text])[0]
        best = [f"d{i}" for i in np.argsort(-scores)[:3]]
        assert list(run[q]) == best and run[q][best[0]] == pytest.approx(float(scores.max()), rel=1e-5)
    assert dense.search(queries, k=3, vectors=encode(list(queries.values()))) == run  # one forward, shared


def test_a_fused_retriever_is_the_fusion_of_its_two_sides_and_each_side_alone_at_weight_0_or_1():
    dense, _, encode = dense_world()
    bm25 = BM25(CORPUS)
    queries = {"q1": "cats on a mat", "q2": "interest rates"}
    fused = FusedRetriever(dense, bm25, 0.3)
    assert fused.name == "dense+bm25"
    want = fuse(dense.search(queries, 100), bm25.search(queries, 100), "wsum", 0.3, k=4)
    assert fused.search(queries, k=4) == want
    for q in queries:  # weight 0: BM25's ranking; 1: the dense side's
        assert list(FusedRetriever(dense, bm25, 0.0).search(queries, 3)[q])[:1] == list(bm25.search(queries, 3)[q])[:1]
        assert list(FusedRetriever(dense, bm25, 1.0).search(queries, 3)[q]) == list(dense.search(queries, 3)[q])


def test_a_tuner_index_opens_as_a_retriever_of_new_text_that_finds_what_the_index_run_found(memory_world):
    """`open_index`: the index's meta.json back to tuner + LLM + template; a corpus text searched online finds the
    same documents `lmort index`'s stored vectors rank first for it."""
    from pipeline.tuner.encoders import TunerEncoder, open_index

    retriever, meta = open_index(memory_world["index"], bf16=False)
    assert isinstance(retriever.encode, TunerEncoder) and retriever.name == meta["system"] == "lmort"
    ds = memory_world["ds"]
    q = list(ds.qrels["test"])[0]
    run = retriever.search({q: ds.queries[q]}, k=5)[q]
    stored = np.load(memory_world["index"] / "vectors.npy")
    online = retriever.encode([ds.queries[q]])[0]
    best = [meta["ids"][i] for i in np.argsort(-(stored @ online))[:5]]
    assert list(run) == best


def test_a_baseline_is_a_registered_class_and_lmort_baselines_names_the_known_ones(prepared, tmp_path):
    from pipeline.retrieval import baselines

    assert baselines.baseline_runs() == {"bm25": "bm25", "minilm": "minilm-l6", "raw": "raw-layer-"}

    class BM25Plus(BM25):  # a BM25 variant: one class (its registration is `@baseline("bm25plus")`)
        name, method = "bm25plus", "bm25+"

    queries = {q: prepared.queries[q] for q in prepared.qrels["test"]}
    plain, plus = BM25(prepared.corpus).search(queries, 5), BM25Plus(prepared.corpus).search(queries, 5)
    assert plain.keys() == plus.keys() and plain != plus  # bm25s' other scoring, through the same interface
    r = CliRunner().invoke(main, ["baselines", "--data", str(prepared.folder), "--systems", "bm25,nope", "--runs",
                                  str(tmp_path / "runs")])
    assert r.exit_code == 2 and "--systems nope: the baselines are bm25, minilm, raw" in r.output
    assert not (tmp_path / "runs").exists()
    # checked before the set is even looked at: a set that does not exist is not the error reported
    r = CliRunner().invoke(main, ["baselines", "--data", str(tmp_path / "no-such-set"), "--systems", "raw",
                                  "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "raw pooled-layer baselines need --stores" in r.output
