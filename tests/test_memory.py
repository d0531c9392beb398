"""The LLM's memory (issue 24): hybrid fusion chosen on dev, `lmort ask` (one forward: query vector and answer),
the reader's SQuAD metrics, and their bad input. On the tiny random model and runs the tests write."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import build_world

from pipeline.answers import read_answers, sample_questions
from pipeline.ask import Memory
from pipeline.data import DataError, load_prepared
from pipeline.fusion import check_same_corpus, check_same_queries, choose, fuse, significance
from pipeline.hits import Hit
from pipeline.index import index_dataset
from pipeline.llm import FrozenLLM, Template
from pipeline.metrics import write_trec_run
from pipeline.prepare import prepare_dataset
from pipeline.reader import Reader, answer_scores, build_prompt, normalize_answer
from pipeline.store import ActivationStore
from pipeline.tiny import write_beir
from pipeline.train import TrainConfig, train
from pipeline.training_sets import TrainingSet
from pipeline.tuner import Tuner, TunerConfig
from stages.cli import main

TUNER = dict(width=16, blocks=1, heads=2, out_dim=16, dropout=0.0, temperature=0.1)


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
    unguarded = choose(dense, bm25, qrels, "wsum", "tiny/dev")
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


# ---------------------------------------------------------------- the reader's metrics and prompts


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Saul Alinsky!") == "saul alinsky"
    s = answer_scores("Saul Alinsky", ["Saul David Alinsky", "Alinsky"])
    assert s["em"] == 0 and s["f1"] == pytest.approx(0.8) and s["contains"] == 1
    assert answer_scores("the answer is alinsky.", ["Alinsky"]) == {"em": 0.0, "f1": pytest.approx(0.5),
                                                                   "contains": 1.0}
    assert answer_scores("1989", ["1988"])["contains"] == 0


def test_the_prompt_starts_with_the_query_template_in_question_first_order():
    t = Template(query="<|im_start|>user\n{text}", case="keep")
    hits = [Hit(1, 1.0, "d1", "Title", "Some   text.")]
    first = build_prompt("Who?", hits, t, "<|im_end|>\n", "question-first")
    assert first.prefix == "<|im_start|>user\nWho?" and first.text.startswith(first.prefix)
    assert "[1] Title: Some text." in first.rest
    last = build_prompt("Who?", hits, t, "<|im_end|>\n", "passages-first")
    assert last.prefix == "" and last.text.startswith("<|im_start|>user\n[1] Title")
    assert last.text.index("Who?") > last.text.index("Some text")
    with pytest.raises(ValueError):
        build_prompt("Who?", hits, t, "", "sideways")


def test_answers_file_errors_name_the_line_and_field(tmp_path):
    f = tmp_path / "answers.jsonl"
    f.write_text('{"_id": "q1", "answers": ["a"]}\n{"_id": "q2", "answers": []}\n')
    with pytest.raises(DataError, match=r"answers.jsonl:2: field 'answers'"):
        read_answers(f)
    with pytest.raises(FileNotFoundError, match="no answers file"):
        read_answers(tmp_path / "missing.jsonl")
    qids = [f"q{i}" for i in range(10)]
    sample = sample_questions(qids, 3, 0)
    assert len(set(sample)) == 3 and set(sample) <= set(qids) and sample == sorted(sample)
    assert {tuple(sample_questions(qids, 3, seed)) for seed in range(5)} != {tuple(sample)}  # the seed draws
    assert sample_questions(qids, 50, 0) == sorted(qids)  # more than there are: all of them


# ---------------------------------------------------------------- ask: one forward, query vector and answer


@pytest.fixture(scope="module")
def memory_world(tmp_path_factory):
    """A tiny model, a prepared set with titles, its stores, a trained tuner and its index."""
    world = build_world(tmp_path_factory.mktemp("memory"), n_docs=30, n_queries=24, negatives=2)
    root, model, ds = world["root"], world["model"], world["ds"]
    queries, corpus = (ActivationStore(root / "stores" / "tiny" / f"{k}.zarr") for k in ("queries", "corpus"))
    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=0, **TUNER)
    train([TrainingSet(ds, queries, corpus, ds.pairs("train").to_pylist(), ds.qrels["dev"])], cfg,
          TrainConfig(epochs=1, batch_size=8), root / "tuner", progress=False)
    index_dataset(root / "tuner" / "best", queries, corpus, list(ds.qrels["test"]), root / "index" / "lmort" / "tiny",
                  root / "run.trec", "lmort", bf16=False, data=ds.name)
    return {"root": root, "model": model, "ds": ds, "index": root / "index" / "lmort" / "tiny"}


def test_the_prompts_own_forward_gives_the_vector_of_encode_texts(memory_world):
    """The query vector read off the full LLM's forward of the prompt prefix equals `encode_texts` (the truncated
    LLM, as the stores and `lmort search` compute it)."""
    tuner = Tuner.load(memory_world["root"] / "tuner" / "best")
    reader = Reader(memory_world["model"], dtype=torch.float32, device="cpu")
    template = Template()
    question = memory_world["ds"].queries["q20"]
    states, cache = reader.prefix_forward(reader.ids(template.format_query(question), True), tuner.cfg.layers)
    one_forward = reader.query_vector(tuner, states, bf16=False)
    llm = FrozenLLM(memory_world["model"], max_layer=2, device="cpu", dtype=torch.float32)
    separate = tuner.encode_texts(llm, [question], template, 8, bf16=False)
    np.testing.assert_allclose(one_forward, separate, atol=1e-4)
    assert cache.get_seq_length() == len(reader.ids(question, True))


def test_generation_from_the_prefix_cache_equals_generation_from_scratch(memory_world):
    reader = Reader(memory_world["model"], dtype=torch.float32, device="cpu")
    parts = build_prompt("alpha beta", [Hit(1, 1.0, "d1", "", "gamma delta")], Template(), reader.tail)
    prefix, rest = reader.prompt_ids(parts)
    _, cache = reader.prefix_forward(prefix, [0])
    cached = reader.continue_answer(prefix, rest, cache, max_new_tokens=6)
    scratch, _ = reader.generate([parts], max_new_tokens=6, batch_size=1, progress=False)
    assert cached == scratch[0]


def test_ask_answers_with_the_passages_it_read_and_times_each_part(memory_world):
    fusion = memory_world["root"] / "fusion.json"
    fusion.write_text(json.dumps({memory_world["ds"].name: {"systems": {"lmort+bm25": {"dense_weight": 0.5}}}}))
    memory = Memory(memory_world["index"], memory_world["ds"], fusion_json=fusion)
    for retriever in ("lmort+bm25", "lmort", "bm25"):
        a = memory.ask(memory_world["ds"].queries["q20"], k=3, retriever=retriever, max_new_tokens=4)
        assert len(a.passages) == 3 and all(p.id in memory_world["ds"].corpus for p in a.passages)
        assert set(a.ms) == {"forward", "retrieve", "generate", "total"} and a.ms["total"] > 0
    # the dense ranking is the index's: the one-forward vector searches the same vectors
    dense = memory.ask(memory_world["ds"].queries["q20"], k=3, retriever="lmort", max_new_tokens=1)
    assert [p.rank for p in dense.passages] == [1, 2, 3]


@pytest.mark.parametrize("kwargs,match", [
    ({"question": "   "}, "empty"),
    ({"k": 10_000}, "outside 1..30"),
    ({"retriever": "minilm-l6"}, "offers"),
])
def test_ask_refuses_bad_input(memory_world, kwargs, match):
    memory = Memory(memory_world["index"], memory_world["ds"])
    args = {"question": "alpha", **kwargs}
    with pytest.raises(DataError, match=match):
        memory.ask(**args)


def test_ask_refuses_an_index_of_another_model_or_template(memory_world, tmp_path):
    import shutil

    other = tmp_path / "index"
    shutil.copytree(memory_world["index"], other)
    meta = json.loads((other / "meta.json").read_text())
    other_case = "keep" if meta["template"]["case"] == "lower" else "lower"
    (other / "meta.json").write_text(json.dumps({**meta, "template": {**meta["template"], "case": other_case}}))
    with pytest.raises(DataError, match="another template"):
        Memory(other, memory_world["ds"])
    with pytest.raises(DataError, match="built with"):
        Memory(memory_world["index"], memory_world["ds"], model="smollm2-135m")


def test_lmort_ask_and_search_print_what_they_found(memory_world):
    r = CliRunner().invoke(main, ["ask", "--index", str(memory_world["index"]), "--data",
                                  str(memory_world["root"] / "prepared"), "--retriever", "lmort", "-k", "2",
                                  "--max-new-tokens", "2", "alpha", "beta"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert "answer: " in r.output and "read (lmort, plain, question-first):" in lines and "ms: forward" in lines[-1]
    assert lines[lines.index("read (lmort, plain, question-first):") + 1].split()[0] == "1"
    assert "no span reader trained for this configuration" in r.output  # and it says so, in one line
    r = CliRunner().invoke(main, ["ask", "--index", str(memory_world["index"]), "--data",
                                  str(memory_world["root"] / "prepared"), " "])
    assert r.exit_code != 0 and "empty" in r.output
    r = CliRunner().invoke(main, ["search", "--index", str(memory_world["index"]), "--data",
                                  str(memory_world["root"] / "prepared"), "-k", "2", "alpha"])
    assert r.exit_code == 0, r.output
    import re

    hit = re.search(r"(?m)\s1\s+-?\d+\.\d{4}\s+(\S+)\n\s+(.+)$", r.output)  # rank, score, id; the text below
    assert hit and hit.group(1) in memory_world["ds"].corpus, r.output
    assert hit.group(2).startswith(memory_world["ds"].corpus[hit.group(1)]["text"].split()[0])


def test_lmort_rag_chooses_on_dev_and_scores_every_system_on_the_same_test_questions(memory_world, tmp_path,
                                                                                      monkeypatch):
    from pipeline.baselines import bm25_run

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
                "ks": [1, 2], "max_new_tokens": 3, "batch_size": 2, "timing_questions": 2}}))
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
    from pipeline.rag import with_gaps

    bm25 = {f"q{i}": 0.5 for i in range(8)}
    better = {q: f + 0.25 + 0.01 * i for i, (q, f) in enumerate(bm25.items())}  # +0.25 on every question
    rows = with_gaps([{"system": "bm25", "F1": 0.5}, {"system": "lmort", "F1": 0.785}],
                     {"bm25": bm25, "lmort": better})
    assert rows[1]["F1 minus bm25"] == pytest.approx(0.285) and float(rows[1]["p"]) < 1e-6
    assert rows[0]["F1 minus oracle"] is None and "p" not in rows[0]


def test_timing_a_fused_system_needs_its_dev_chosen_weight(memory_world):
    """A fused system is timed with the weight `lmort fuse` chose on dev; without one it refuses, never guesses."""
    from pipeline.data import DataError
    from pipeline.rag import time_retrieval

    ds = memory_world["ds"]
    with pytest.raises(DataError, match="no dev-chosen fusion weight"):
        time_retrieval("lmort+bm25", ["a question"], ds, {}, {"pooled-linear+bm25": {"dense_weight": 0.3}})
    assert time_retrieval("bm25", ["a question"], ds, {}, {}) > 0


def test_bad_input_to_ask_search_and_fuse_is_one_line_before_any_model_loads(memory_world, tmp_path):
    index, data = str(memory_world["index"]), str(memory_world["root"] / "prepared")
    cases = [
        (["ask", "--index", index, "--data", data, "--max-new-tokens", "-5", "alpha"], "at least 1"),
        (["ask", "--index", index, "--data", data, "-k", "0", "alpha"], "-k"),
        (["ask", "--index", index, "--data", data, "--reader", "span", "alpha"], "no span reader"),
        (["search", "--index", index, "-k", "0", "alpha"], "-k"),
        (["search", "--index", index, "-k", "-3", "alpha"], "-k"),
    ]
    not_json = tmp_path / "fusion.json"
    not_json.write_text("weights: 0.5\n")
    cases.append((["ask", "--index", index, "--data", data, "--fusion", str(not_json), "alpha"], "not JSON"))
    listed = tmp_path / "params.yaml"
    listed.write_text("- a\n- b\n")
    cases.append((["fuse", "--params", str(listed), "--runs", str(tmp_path), "--dev-runs", str(tmp_path), "--out",
                   str(tmp_path / "fused")], "not a mapping"))
    for args, message in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and isinstance(r.exception, SystemExit), (args, r.output)  # no traceback
        assert message in r.output, (args, r.output)
        if message in ("at least 1", "-k"):  # checked before the model loads
            assert "Loading weights" not in r.output, args
    assert not (tmp_path / "fused").exists()
