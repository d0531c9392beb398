"""The reranker on the tiny random model: it learns a planted relevance, reranking only reorders a run's
candidates, the stored states score as the question's own forward does, dev's choice is guarded, and bad input is
refused in one line with nothing written."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import build_world

from pipeline.activations.store import open_stores, shared_fingerprint
from pipeline.common.errors import ConfigError, DataError, StoreError
from pipeline.common.metrics import write_trec_run
from pipeline.interaction.rerank import EncodedPassages, choose_rerank, combine, rerank_scores, score_candidates
from pipeline.interaction.rerank_runs import chosen_reranker, rerank_one_run
from pipeline.interaction.rerank_train import (
    RerankerTrainConfig,
    RerankStageConfig,
    dev_sets,
    reranker_model_config,
    reranker_train_config,
    train_reranker,
)
from pipeline.interaction.reranker import Reranker, RerankerConfig
from pipeline.tuner.training_sets import TrainingSet
from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(width=16, heads=2, late_dim=16, dropout=0.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("rerank"), n_docs=40, n_queries=64, negatives=4)
    queries, corpus = open_stores(w["stores"], w["ds"].name)
    ts = TrainingSet(w["ds"], queries, corpus, w["ds"].pairs("train").to_pylist(), w["ds"].qrels["dev"])
    return {**w, "queries": queries, "corpus": corpus, "set": ts}


@pytest.fixture(scope="module", params=["late", "cross"])
def trained(world, request):
    """Each design trained from the stores into OUT/<design>/, and chosen.json naming it (as train-reranker does)."""
    ts = world["set"]
    cfg = RerankerConfig(llm_width=world["queries"].width, layers=[0, 2], design=request.param, **SMALL)
    train_cfg = RerankerTrainConfig(epochs=12, batch_size=8, negatives=3, lr=3e-3, evals=2, dev_depth=10,
                                    bf16=False)
    out = world["root"] / "reranker"
    summary = train_reranker([ts], dev_sets([ts], [], "test", 10), cfg, train_cfg, out / request.param,
                             progress=False)
    (out / "chosen.json").write_text(json.dumps({"design": request.param}))
    return {"summary": summary, "folder": out, "design": request.param}


def test_the_reranker_learns_a_planted_relevance(world, trained):
    """Each training query shares words with its one relevant passage: the loss falls, and with the positive put
    last by the first stage, reranking its candidates moves it to rank 1 for most queries."""
    summary = trained["summary"]
    losses = [x["loss"] for x in json.loads((trained["folder"] / trained["design"] / "train.json").read_text())
              ["curve"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert (trained["folder"] / trained["design"] / "training.png").is_file()
    assert "queries seen" in (trained["folder"] / trained["design"] / "curve.md").read_text()
    assert not (trained["folder"] / trained["design"] / "checkpoint").exists()
    reranker = chosen_reranker(trained["folder"], shared_fingerprint(world["queries"].fingerprint))
    assert reranker.cfg.design == trained["design"] and summary["best"]["select"] is not None
    first = {r["query_id"]: {r["positive_ids"][0]: 0.0, **{n: 1.0 + i for i, n in enumerate(r["negative_ids"][:4])}}
             for r in world["set"].pairs}
    scores = rerank_scores(reranker, world["queries"], EncodedPassages(reranker, world["corpus"], False), first, 5,
                           bf16=False)
    reranked = combine(first, scores, 5, 1.0)
    top = [next(iter(reranked[q])) == r["positive_ids"][0] for q, r in zip(first, world["set"].pairs)]
    assert sum(top) / len(top) >= 0.6, f"{sum(top)} of {len(top)} at rank 1 (chance: 1 in 5)"


def test_rerank_keeps_the_candidate_set_and_only_reorders(world, trained):
    reranker = chosen_reranker(trained["folder"])
    ds = world["ds"]
    rng = random.Random(0)
    first = {q: {f"d{i}": float(10 - j) for j, i in enumerate(rng.sample(range(40), 10))} for q in ds.qrels["test"]}
    scores = rerank_scores(reranker, world["queries"], EncodedPassages(reranker, world["corpus"], False), first, 4,
                           bf16=False)
    for weight in (1.0, 0.5):
        run = combine(first, scores, 4, weight)
        for q, docs in first.items():
            order = list(run[q])
            assert set(order) == set(docs)  # the same candidates
            by_first = sorted(docs, key=lambda d: -docs[d])
            assert set(order[:4]) == set(by_first[:4]) and order[4:] == by_first[4:]  # only the top 4 move
            assert list(run[q].values()) == sorted(run[q].values(), reverse=True)
            if weight == 1.0:
                assert order[:4] == sorted(by_first[:4], key=lambda d: -scores[q][d])
    assert combine(first, scores, 4, 0.0) == first


def test_the_stored_states_score_as_the_question_s_own_forward(world, trained):
    """The queries store holds what the frozen LLM computes for the query (float16): a reranker reading a question's
    own forward (`lmort ask`) scores its candidates as it does from the store."""
    from pipeline.activations.extract import cached_llm
    from pipeline.common.config import Template

    reranker = chosen_reranker(trained["folder"])
    passages = EncodedPassages(reranker, world["corpus"], False)
    llm = cached_llm(world["model"], 2, "float32")
    ds = world["ds"]
    for qid in sorted(ds.qrels["test"])[:5]:
        docs = [f"d{i}" for i in range(8)]
        stored = rerank_scores(reranker, world["queries"], passages, {qid: {d: 1.0 for d in docs}}, 8, bf16=False)[qid]
        ids = llm.tokenize([Template().format_query(ds.queries[qid])], 8)[0]
        states, mask = llm.forward(ids, [0, 2])
        online = score_candidates(reranker, states, mask, passages, [docs], bf16=False)[0]
        assert [stored[d] for d in docs] == pytest.approx(online, rel=0.02, abs=0.02)


def test_passage_encodings_stored_beside_the_runs_score_as_fresh_ones(world, trained, tmp_path):
    """`lmort rerank` stores every passage's encoding (query-independent): read back, they score a run exactly as
    encodings computed from the store do; a file of another reranker is not used."""
    reranker = chosen_reranker(trained["folder"])
    fresh = EncodedPassages(reranker, world["corpus"], False)
    fresh.encode_all(progress=False)
    fresh.save(tmp_path / "encoded.safetensors")
    kept = EncodedPassages(reranker, world["corpus"], False)
    assert kept.load_saved(tmp_path / "encoded.safetensors")
    ids = list(world["corpus"].ids)
    assert set(kept._kept) == set(ids)
    x, mask = kept.get(ids[:7])
    y, other_mask = EncodedPassages(reranker, world["corpus"], False).get(ids[:7])
    assert torch.equal(mask, other_mask) and torch.equal(x, y)
    run = {q: {d: 1.0 for d in ids[:10]} for q in sorted(world["ds"].qrels["test"])[:3]}
    assert rerank_scores(reranker, world["queries"], kept, run, 10, bf16=False) == rerank_scores(
        reranker, world["queries"], fresh, run, 10, bf16=False)
    with torch.no_grad():
        next(reranker.parameters()).add_(0.01)  # another reranker
    assert not EncodedPassages(reranker, world["corpus"], False).load_saved(tmp_path / "encoded.safetensors")


def test_dev_chooses_depth_and_weight_and_a_change_dev_cannot_show_stays_off():
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(40)}
    # the first stage ranks the relevant passage 5th of 10
    first = {f"q{i}": {**{f"n{i}-{j}": 10.0 - j for j in range(4)}, f"d{i}": 5.5,
                       **{f"m{i}-{j}": 5.0 - j for j in range(5)}} for i in range(40)}
    perfect = {q: {d: float(d in qrels[q]) for d in docs} for q, docs in first.items()}
    choice = choose_rerank(first, perfect, qrels, [3, 5, 10], "dev")
    assert not choice.guarded and choice.depth == 5 and choice.weight == 1.0 and choice.dev_reranked == 1.0
    # a reranker that only hurts (the relevant passage scored lowest): no depth or weight beats the first stage
    adverse = {q: {d: -s for d, s in docs.items()} for q, docs in perfect.items()}
    worse = choose_rerank(first, adverse, qrels, [3, 5, 10], "dev")
    assert worse.guarded and worse.weight == 0.0 and worse.dev_alone <= worse.dev_first
    assert combine(first, adverse, worse.depth, worse.weight) == first


def test_a_reranker_from_other_stores_is_refused(tmp_path):
    reranker = Reranker(RerankerConfig(llm_width=8, layers=[0], width=8, heads=2))
    reranker.save(tmp_path / "r" / "late" / "best", {"stores": {"model": "a", "layers": [0], "dtype": "float16"}})
    (tmp_path / "r" / "chosen.json").write_text(json.dumps({"design": "late"}))
    with pytest.raises(StoreError, match=r"trained on other stores: .*dtype"):
        chosen_reranker(tmp_path / "r", {"model": "a", "layers": [0], "dtype": "float32"})
    with pytest.raises(FileNotFoundError, match="no reranker here"):
        Reranker.load(tmp_path / "none")


def test_rerank_refuses_bad_input_in_one_line_and_writes_nothing(world, trained, tmp_path):
    ds = world["ds"]
    args = ["rerank-run", "--reranker", str(trained["folder"]), "--stores", str(world["stores"]), "--data",
            str(ds.folder)]
    good = tmp_path / "bm25.trec"
    write_trec_run({q: {"d1": 2.0, "d2": 1.0} for q in ds.qrels["test"]}, good, "bm25")
    missing = tmp_path / "missing.trec"
    write_trec_run({q: {"d1": 2.0, "nosuch": 1.0} for q in ds.qrels["test"]}, missing, "bm25")
    not_trec = tmp_path / "bad.trec"
    not_trec.write_text("q1 d1 0.5\n")
    for run, extra, message in ((missing, [], "no stored states for passage nosuch"),
                                (good, ["--depth", "0"], "--depth must be a positive number"),
                                (not_trec, [], "bad.trec:1: expected 6 fields")):
        out = tmp_path / "out.trec"
        result = CliRunner().invoke(main, [*args, "--run", str(run), "--out", str(out), *extra])
        assert result.exit_code != 0 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    with pytest.raises(DataError, match="weight"):
        rerank_one_run(trained["folder"], world["stores"], str(ds.folder), good, 5, 1.5, tmp_path / "w.trec")
    result = CliRunner().invoke(main, [*args, "--run", str(good), "--out", str(tmp_path / "ok.trec"), "--depth", "2"])
    assert result.exit_code == 0, result.output
    assert sum(1 for _ in open(tmp_path / "ok.trec")) == 2 * len(ds.qrels["test"])


def test_the_reranker_section_is_checked_and_its_defaults_are_the_default_configuration():
    from dataclasses import asdict

    from pipeline.common.params import load_params

    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ConfigError, match="unknown reranker parameters"):
        reranker_train_config({"reranker": {"widht": 3}})
    with pytest.raises(ConfigError, match=r"reranker.layers asks for \[6\]"):
        reranker_model_config({"reranker": {"layers": [6]}}, "late", [0, 2], 8, True)
    assert reranker_train_config(params) == RerankerTrainConfig()
    model = reranker_model_config(params, "cross", [0, 6], 576, True)
    assert model == RerankerConfig(llm_width=576, layers=[0, 6], design="cross")
    section = {k: tuple(v) if isinstance(v, list) else v for k, v in params["reranker"].items()}
    stage = {k: v for k, v in asdict(RerankStageConfig()).items() if k in section}
    assert stage == {k: section[k] for k in stage}
    with pytest.raises(ConfigError, match="design must be one of"):
        RerankerConfig(llm_width=8, layers=[0], design="colbert")


def test_ask_reranks_the_retrieved_passages_with_the_question_s_own_states(world, trained):
    """An index of a configuration that trained a reranker: `lmort ask` retrieves the candidates, reranks them with
    the question's own forward against their stored states and times the step; --no-rerank leaves them as found."""
    from pipeline.answers.ask import Memory
    from pipeline.common.config import TrainConfig, TunerConfig
    from pipeline.tuner.indexing import index_dataset
    from pipeline.tuner.train import train

    root, ds = world["root"], world["ds"]
    index = root / "index" / "lmort" / ds.name  # cache/<name>/index/<variant>/<set>: the reranker at root/reranker
    if not (index / "meta.json").exists():
        cfg = TunerConfig(llm_width=world["queries"].width, stream_layer=2, cross_layer=0, width=16, blocks=1,
                          heads=2, out_dim=16)
        train([world["set"]], cfg, TrainConfig(epochs=1, batch_size=8), root / "tuner", progress=False)
        index_dataset(root / "tuner" / "best", world["queries"], world["corpus"], list(ds.qrels["test"]), index,
                      root / "run.trec", "lmort", bf16=False, data=ds.name, prepared=ds.folder,
                      configuration=root)
    question = ds.queries[sorted(ds.qrels["test"])[0]]
    memory = Memory(index, ds, reader="generate", rerank=True)
    a = memory.ask(question, k=3, retriever="lmort", max_new_tokens=2, bf16=False)
    assert "rerank" in a.ms and a.ms["rerank"] > 0 and len(a.passages) == 3
    plain = Memory(index, ds, reader="generate", rerank=False).ask(question, k=40, retriever="lmort",
                                                                   max_new_tokens=1, bf16=False)
    assert "rerank" not in plain.ms
    scores = score_candidates(memory.reranker.reranker, *_online(memory, question), memory.reranker.passages,
                              [[p.id for p in plain.passages]], bf16=False)[0]
    best = [d for _, d in sorted(zip(scores, [p.id for p in plain.passages]), key=lambda x: -x[0])[:3]]
    assert [p.id for p in a.passages] == best  # the top 3 of all 40 (depth 100) by the reranker's score alone
    result = CliRunner().invoke(main, ["ask", "--index", str(index), "--data", str(ds.folder), "--reader", "generate",
                                       "--retriever", "lmort",
                                       "--rerank", "--max-new-tokens", "1", question])
    assert result.exit_code == 0 and "lmort>rerank" in result.output and "rerank " in result.output, result.output
    search = ["search", "--index", str(index), "--data", str(ds.folder), "-k", "3", "--bf16", "false"]
    reranked = CliRunner().invoke(main, [*search, "--rerank", question])
    assert reranked.exit_code == 0 and "reranked (lmort>rerank) in" in reranked.output, reranked.output
    assert re.findall(r"\b(d\d+)\b", reranked.output)[:3] == best  # the same top 3, in order, as `lmort ask` read
    plain = CliRunner().invoke(main, [*search, question])  # dev chose nothing for lmort here: not reranked
    assert plain.exit_code == 0 and "reranked" not in plain.output, plain.output


def _online(memory, question: str):
    ids = memory.reader.ids(memory.template.format_query(question), True)
    states, _ = memory.reader.prefix_forward(ids, memory.reranker.layers)
    states = {layer: s[:, : memory.query_max_length] for layer, s in states.items()}
    return states, torch.ones(next(iter(states.values())).shape[:2], dtype=torch.bool)


def test_a_dev_sample_scores_only_its_queries_and_a_step_budget_caps_the_epoch(world):
    """`dev_queries` samples each dev split once (seeded): BM25's run and the judgements scored cover the same
    queries, so the sampled-out ones do not count as zeros; `max_steps_per_epoch` reaches the batch recipe."""
    from pipeline.interaction.rerank_train import _loop_config
    from pipeline.tuner.loop import epoch_batches

    ts = world["set"]
    full = dev_sets([ts], [], "test", 10)[0]
    sample = dev_sets([ts], [], "test", 10, max_queries=3, seed=1)[0]
    assert len(sample.qrels) == 3 < len(full.qrels) and set(sample.qrels) == set(sample.bm25) <= set(full.qrels)
    assert set(dev_sets([ts], [], "test", 10, max_queries=3, seed=1)[0].qrels) == set(sample.qrels)
    assert len(epoch_batches([ts], _loop_config(RerankerTrainConfig(batch_size=8, max_steps_per_epoch=2)), 0)) == 2


def test_the_teacher_scores_every_scheduled_pair_and_its_margins_join_the_loss(world, tmp_path, monkeypatch):
    """Distillation (`reranker.teacher`): the teacher scores each query's positive and every negative the seeded
    schedule will show it (BM25 alone here: the planted words put the positive first), the table is read back
    instead of recomputed, and the Margin-MSE term is zero exactly when the student's margins are the teacher's."""
    from pipeline.interaction import teacher as teacher_module
    from pipeline.interaction.rerank_train import _loop_config, listwise_loss, margin_mse
    from pipeline.retrieval.baselines import bm25_run
    from pipeline.tuner.loop import epoch_batches

    ts = world["set"]
    cfg = RerankerTrainConfig(epochs=2, batch_size=8, negatives=3, bf16=False, teacher="minilm+bm25")
    schedule = [epoch_batches([ts], _loop_config(cfg), e) for e in range(cfg.epochs)]
    targets = teacher_module.teacher_targets([ts], schedule, 0.0, tmp_path, bf16=False, progress=False)
    run = targets[ts.data.name]
    shown = [(q, p, negs) for batches in schedule for _, batch in batches for q, p, negs, _ in batch]
    assert all({p, *negs} <= set(run[q]) for q, p, negs in shown)
    assert sum(all(run[q][p] > run[q][n] for n in negs) for q, p, negs in shown) >= 0.6 * len(shown)  # chance 1/4
    searched = bm25_run(ts.data, list(run), 100)  # the pairs score as BM25's own search scores them
    assert all(searched[q][d] == pytest.approx(v, rel=1e-5) for q in run for d, v in run[q].items() if v > 0)

    stopwords = replace(ts, data=replace(ts.data, queries={**ts.data.queries, "q0": "what is the"}))
    assert set(teacher_module.bm25_pair_scores(stopwords, {"q0": {"d0", "d1"}})["q0"].values()) == {0.0}

    monkeypatch.setattr(teacher_module, "bm25_pair_scores", lambda *a: pytest.fail("recomputed"))
    assert teacher_module.teacher_targets([ts], schedule, 0.0, tmp_path, progress=False) == targets
    monkeypatch.setattr(teacher_module, "minilm_pair_scores", lambda ts, groups, *a: {q: dict.fromkeys(d, 0.5)
                                                                                      for q, d in groups.items()})
    monkeypatch.setattr(teacher_module, "bm25_pair_scores", lambda ts, groups: {q: dict.fromkeys(d, 1.0)
                                                                                for q, d in groups.items()})
    dense = teacher_module.teacher_targets([ts], schedule, 1.0, tmp_path, progress=False)  # another weight: anew
    assert {v for q in dense[ts.data.name].values() for v in q.values()} == {0.5}
    assert teacher_module.read_targets(tmp_path / "teacher.parquet") == dense

    batch = schedule[0][0][1]
    start = torch.arange(len(batch)) * (1 + cfg.negatives)  # the in-batch layout: each positive, then its negatives
    scores = torch.zeros(len(batch), len(batch) * (1 + cfg.negatives))
    for i, (q, p, negs, _) in enumerate(batch):
        for j, d in enumerate([p, *negs]):
            scores[i, start[i] + j] = 10.0 * run[q][d]
    assert margin_mse(scores, start, batch, run, 10.0).item() == pytest.approx(0.0, abs=1e-9)
    assert margin_mse(scores, start, batch, run, 20.0).item() > 0.1

    for design in ("late", "cross"):  # both column layouts: the batch's passages (late) and each query's own group
        torch.manual_seed(0)
        reranker = Reranker(RerankerConfig(llm_width=world["queries"].width, layers=[0, 2], design=design, **SMALL))
        plain = listwise_loss(reranker, ts, batch, cfg, "cpu")
        taught = listwise_loss(reranker, ts, batch, cfg, "cpu", run)
        assert taught > plain
        assert listwise_loss(reranker, ts, batch, replace(cfg, distill=0.0), "cpu", run).item() == pytest.approx(
            plain.item())
    with pytest.raises(ConfigError, match="reranker.teacher must be"):
        reranker_train_config({"reranker": {"teacher": "cross-encoder"}})
