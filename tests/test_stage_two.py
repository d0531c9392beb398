"""Stage two on the tiny random model: training from the stores only, resume, FAISS, online path, metrics."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import build_world, write_geometry
from safetensors.torch import load_file

from pipeline.activations.extract import ExtractSpec, extract
from pipeline.activations.llm import FrozenLLM
from pipeline.activations.store import ActivationStore
from pipeline.common.config import Template, TrainConfig, TunerConfig
from pipeline.common.metrics import evaluate
from pipeline.retrieval.index import build_index, retrieve
from pipeline.tuner.model import Tuner
from pipeline.tuner.train import info_nce, train
from pipeline.tuner.training_sets import TrainingSet
from stages.cli import main

TUNER = dict(width=16, blocks=1, heads=2, out_dim=16, dropout=0.1, temperature=0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a prepared tiny set and its two stores (layers 0, 1, 2)."""
    return build_world(tmp_path_factory.mktemp("world"), n_docs=60, n_queries=48, negatives=4)


def training_set(world):
    ds = world["ds"]
    q = ActivationStore(world["stores"] / "tiny" / "queries.zarr")
    c = ActivationStore(world["stores"] / "tiny" / "corpus.zarr")
    return TrainingSet(ds, q, c, ds.pairs("train").to_pylist(), ds.qrels["dev"])


def loss_curve(out):
    """The loss per step that training logged through dvclive."""
    return (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text()


def test_training_with_the_model_weights_absent(world, tmp_path, monkeypatch):
    moved = tmp_path / "gone"
    shutil.move(world["model"], moved)
    monkeypatch.setattr(FrozenLLM, "__init__", lambda *a, **k: pytest.fail("stage two loaded the LLM"))
    try:
        geometry = write_geometry(tmp_path)
        params = tmp_path / "p.yaml"
        params.write_text("tuner: {width: 16, blocks: 1, heads: 2, out_dim: 16}\ntrain: {epochs: 1, batch_size: 8}\n")
        result = CliRunner().invoke(main, ["train", "--stores", str(world["stores"]), "--data", str(world["ds"].folder),
                                           "--geometry", str(geometry), "--params", str(params),
                                           "--layer-selection", "geometry", "--out", str(tmp_path / "run")])
        assert result.exit_code == 0, result.output
        # the geometry's layers were trained (U = 2 streams, A = 1 is cross-attended), from the stores alone
        tuner = Tuner.load(tmp_path / "run" / "best")
        assert (tuner.cfg.stream_layer, tuner.cfg.cross_layer) == (2, 1)
        summary = json.loads((tmp_path / "run" / "train.json").read_text())
        assert summary["steps"] == len(world["ds"].pairs("train")) // 8 and 0.0 <= summary["dev_ndcg@10"] <= 1.0
        saved = json.loads((tmp_path / "run" / "best" / "tuner.json").read_text())
        assert saved["dev_ndcg@10"] == summary["dev_ndcg@10"]  # the tuner kept is the one its dev score names
    finally:
        shutil.move(moved, world["model"])


def test_killed_training_resumes_to_the_same_weights(world, tmp_path, monkeypatch):
    import pipeline.tuner.train as tr

    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=1, **TUNER)
    tcfg = TrainConfig(epochs=3, batch_size=8, patience=9)
    full = train([training_set(world)], cfg, tcfg, tmp_path / "a", progress=False)
    real, calls = tr.info_nce, []

    def dies_in_epoch_two(*a, **k):
        calls.append(1)
        if len(calls) > full["steps"] // 3 + 1:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(tr, "info_nce", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train([training_set(world)], cfg, tcfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(tr, "info_nce", real)
    (tmp_path / "b" / ".checkpoint.old").mkdir()  # as a kill during a checkpoint swap leaves it
    resumed = train([training_set(world)], cfg, tcfg, tmp_path / "b", progress=False)
    assert full["steps"] == resumed["steps"]
    assert loss_curve(tmp_path / "a") == loss_curve(tmp_path / "b")
    wa = load_file(tmp_path / "a" / "best" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "best" / "model.safetensors")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert not (tmp_path / "b" / "checkpoint").exists()  # a finished run leaves no checkpoint to "resume"
    assert not (tmp_path / "b" / ".checkpoint.old").exists()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_index_kind_ranks_by_inner_product_and_reports_it(kind):
    """The project's index kinds (exact, HNSW, IVF with its nprobe) rank by the inner product the tuners are trained
    for, not by L2 distance (documents of varied norms tell the two apart), and report that product as the
    score; an unknown kind is refused."""
    rng = np.random.default_rng(1)
    docs = (rng.standard_normal((400, 16)) * rng.uniform(0.2, 3, (400, 1))).astype(np.float32)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    run = retrieve(build_index(docs, kind, use_gpu=False), [f"d{i}" for i in range(400)],
                   [f"q{i}" for i in range(50)], queries, k=5)
    exact = np.argmax(queries @ docs.T, axis=1)
    nearest = np.argmin(((queries[:, None] - docs[None]) ** 2).sum(-1), axis=1)
    assert (exact != nearest).sum() > 10  # the two rankings do differ on this data
    top = [int(max(run[f"q{i}"], key=run[f"q{i}"].get)[1:]) for i in range(50)]
    agree_ip, agree_l2 = (sum(t == e for t, e in zip(top, best)) for best in (exact, nearest))
    # exact search agrees with the inner product everywhere; HNSW nearly; IVF probes an eighth of its lists
    assert agree_ip >= {"flat": 50, "hnsw": 45, "ivf": 25}[kind] and agree_ip > agree_l2 + 10, (agree_ip, agree_l2)
    assert run["q0"][f"d{top[0]}"] == pytest.approx(float(queries[0] @ docs[top[0]]), rel=1e-4)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(docs, "annoy")


def test_a_misspelt_tuner_knob_is_one_line_and_exit_1_from_lmort_train(world, tmp_path):
    """`similarity: cosin` in params.yaml: one line naming the knob, exit 1, nothing written."""
    params = tmp_path / "params.yaml"
    params.write_text("tuner: {width: 16, blocks: 1, heads: 2, out_dim: 16, similarity: cosin}\n"
                      "train: {epochs: 1, batch_size: 8}\n")
    r = CliRunner().invoke(main, ["train", "--stores", str(world["stores"]), "--data", str(world["ds"].folder),
                                  "--geometry", str(write_geometry(tmp_path)), "--params", str(params),
                                  "--layer-selection", "geometry", "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "similarity" in r.output.strip().splitlines()[-1] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("bf16", [False, True])
def test_online_vectors_equal_cached_vectors(world, tmp_path, monkeypatch, bf16):
    """`lmort search` (text -> LLM -> tuner) gives the index's vectors. With bf16 on (forced here: emulated where
    the CPU lacks it) both paths feed the tuner bfloat16 states under autocast: equal to bfloat16's precision."""
    monkeypatch.setenv("LMORT_BF16", "1" if bf16 else "0")
    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=0, **TUNER)
    train([training_set(world)], cfg, TrainConfig(epochs=1, batch_size=8), tmp_path / "run", progress=False)
    tuner = Tuner.load(tmp_path / "run" / "best")
    store = ActivationStore(world["stores"] / "tiny" / "queries.zarr")
    ids = list(world["ds"].queries)[:10]
    cached = tuner.encode_store(store, ids, progress=False)
    if bf16:  # really computed in bfloat16
        assert not np.allclose(cached, tuner.encode_store(store, ids, progress=False, bf16=False), atol=1e-5)
    llm = FrozenLLM(world["model"], max_layer=2, device="cpu", dtype=torch.float32)  # as the store's states
    online = tuner.encode_texts(llm, [world["ds"].queries[i] for i in ids], Template(), 8)
    np.testing.assert_allclose(online, cached, atol=2e-2 if bf16 else 5e-3)


def test_metrics_on_a_hand_computed_run():
    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"c": 2, "d": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0}, "q2": {"d": 2.0, "c": 1.0}}
    m = evaluate(run, qrels)
    # q1: relevant doc at rank 2 -> nDCG = (1/log2 3) / 1, RR = 1/2
    # q2: gains 1 then 2 at ranks 1, 2 -> DCG = 1 + 2/log2 3; ideal = 2 + 1/log2 3 (trec_eval: gain = grade)
    import math

    ndcg1 = 1 / math.log2(3)
    ndcg2 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert m["nDCG@10"] == pytest.approx((ndcg1 + ndcg2) / 2, abs=1e-4)
    assert m["MRR@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["Recall@100"] == pytest.approx(1.0)
    # a judged query with no results counts as zero
    assert evaluate({"q1": run["q1"]}, qrels)["MRR@10"] == pytest.approx(0.25)


def test_evaluate_scores_only_the_configured_systems(world, tmp_path):
    """A run file left by a variant the configuration no longer names is not scored."""
    from pipeline.common.metrics import write_trec_run

    ds = world["ds"]
    qids = list(ds.qrels["test"])
    run = {q: {d: 1.0 for d in ds.qrels["test"][q]} for q in qids}  # a perfect run
    folder = tmp_path / "runs" / ds.name / "test"
    for system in ("lmort", "old-variant", "bm25", "raw-layer-2", "minilm-l6"):
        write_trec_run(run, folder / f"{system}.trec", system)
    params = tmp_path / "params.yaml"
    params.write_text(f"eval_sets: ['{world['root'] / 'prepared'}']\nvariants: [lmort]\nbaselines: bm25,raw\n")
    out = tmp_path / "metrics.json"
    r = CliRunner().invoke(main, ["evaluate", "--runs", str(tmp_path / "runs"), "--params", str(params),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    scored = json.loads(out.read_text())[ds.name]
    assert sorted(scored) == ["bm25", "lmort", "raw-layer-2"]
    assert scored["lmort"]["nDCG@10"] == pytest.approx(1.0)
    assert "old-variant" not in out.with_suffix(".md").read_text()


def test_report_rows_split_in_domain_and_zero_shot_and_check_the_claim():
    from pipeline.evaluation.report import ablation_rows, claim_verdict

    metrics = {"a": {"lmort": {"nDCG@10": 0.5}, "a-only": {"nDCG@10": 0.4}, "bm25": {"nDCG@10": 0.9}},
               "b": {"lmort": {"nDCG@10": 0.1}, "a-only": {"nDCG@10": 0.4}, "bm25": {"nDCG@10": 0.9}}}
    rows = {r["system"]: r for r in ablation_rows(metrics, in_domain=["a"])}
    assert rows["lmort"]["average"] == pytest.approx(0.3)
    assert rows["lmort"]["in-domain"] == pytest.approx(0.5) and rows["lmort"]["zero-shot"] == pytest.approx(0.1)
    for system in ("lmort", "a-only"):  # trained tuners carry a parameter count; bm25 is no rival
        rows[system]["parameters"] = "1"
    verdict = claim_verdict(list(rows.values()))
    assert "does not hold" in verdict and "a-only" in verdict and "0.300" in verdict
    rows["a-only"]["average"] = 0.2
    assert "claim holds" in claim_verdict(list(rows.values()))


def test_report_gaps_are_lmort_minus_each_reference():
    from pipeline.evaluation.report import ablation_rows, lmort_gaps

    scores = {"lmort": (0.5, 0.1), "a-only": (0.4, 0.4), "pooled-linear": (0.2, 0.2), "bm25": (0.9, 0.6),
              "raw-layer-0": (0.1, 0.1), "raw-layer-2": (0.3, 0.2)}
    metrics = {ds: {s: {"nDCG@10": v[i]} for s, v in scores.items()} for i, ds in enumerate(["a", "b"])}
    rows = ablation_rows(metrics, in_domain=["a"])
    for r in rows:
        if r["system"] in ("lmort", "a-only", "pooled-linear"):
            r["parameters"] = "1"
    gaps = {g["LMORT minus"]: g for g in lmort_gaps(rows, ["a", "b", "average", "in-domain", "zero-shot"])}
    assert list(gaps) == ["bm25", "a-only", "raw-layer-2"]  # no MiniLM scored; the best variant, the best raw layer
    assert gaps["bm25"]["zero-shot"] == pytest.approx(-0.5) and gaps["bm25"]["a"] == pytest.approx(-0.4)
    assert gaps["a-only"]["average"] == pytest.approx(-0.1) and gaps["raw-layer-2"]["b"] == pytest.approx(-0.1)
    assert lmort_gaps([r for r in rows if r["system"] != "lmort"], ["a"]) == []


def test_streamed_stores_train_to_the_same_weights_as_loaded_ones(world, tmp_path):
    """A memory budget of 0 streams every store from Zarr (read ahead by a thread): same batches, same weights."""
    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=1, **TUNER)
    loaded = train([training_set(world)], cfg, TrainConfig(epochs=1, batch_size=8), tmp_path / "a", progress=False)
    streamed_set = training_set(world)
    streamed = train([streamed_set], cfg, TrainConfig(epochs=1, batch_size=8, memory_gb=0, prefetch=3),
                     tmp_path / "b", progress=False)
    assert not streamed_set.corpus._memory and not streamed_set.queries._memory  # really read from Zarr
    assert loaded["steps"] == streamed["steps"] > 1
    assert loss_curve(tmp_path / "a") == loss_curve(tmp_path / "b")
    wa = load_file(tmp_path / "a" / "best" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "best" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_set_mixing_rule():
    from pipeline.tuner.loop import set_quotas

    assert set_quotas([1600, 160], 16, alpha=1.0) == [100, 10]  # proportional: each query once an epoch
    assert set_quotas([1600, 160], 16, alpha=0.0) == [55, 55]  # uniform over sets, same epoch length
    big, small = set_quotas([1600, 160], 16, alpha=0.5)  # square root: 10x the queries, about 3.2x the batches
    assert big + small == 110 and big / small == pytest.approx(10**0.5, rel=0.05)


def test_a_small_set_repeats_its_queries_but_never_within_a_batch(world):
    from pipeline.tuner.loop import epoch_batches

    ts = training_set(world)
    n = len([r for r in ts.pairs if r["positive_ids"]])
    other = TrainingSet(ts.data, ts.queries, ts.corpus, ts.pairs * 20)  # a set 20x larger
    batches = epoch_batches([ts, other], TrainConfig(batch_size=8, mix_alpha=0.0), epoch=0)
    mine = [b for s_i, b in batches if s_i == 0]
    assert len(mine) == len(batches) // 2 > n // 8  # uniform: half the batches, more than one pass over its queries
    assert all(len({q for q, *_ in b}) == len(b) == 8 for b in mine)


def test_query_samples_are_nested_and_keep_every_dev_split(world):
    from pipeline.tuner.training_sets import sample_queries

    ts = training_set(world)
    other = TrainingSet(ts.data, ts.queries, ts.corpus, ts.pairs[:6], {"q": {"d": 1}})
    small, large = (sample_queries([ts, other], n, seed=0) for n in (5, 20))
    assert sum(len(s.pairs) for s in small) == 5 and sum(len(s.pairs) for s in large) == 20
    for s, b in zip(small, large):  # the smaller sample is part of the larger one
        assert {r["query_id"] for r in s.pairs} <= {r["query_id"] for r in b.pairs}
    assert len(small) == 2 and small[1].dev_qrels == {"q": {"d": 1}}
    assert sample_queries([ts], None, 0)[0] is ts


def test_stores_built_unlike_each_other_or_the_tuner_are_refused(world, tmp_path):
    """A queries store computed in bfloat16 beside a float32 corpus store: train refuses and names the field; a tuner
    trained on float32 stores refuses to index bfloat16 ones."""
    from pipeline.common.errors import StoreError
    from pipeline.tuner.indexing import index_dataset

    spec = ExtractSpec(world["model"], (0, 1, 2), "queries", 8, compute_dtype="bfloat16", shard_tokens=256,
                       chunk_tokens=16)
    extract(world["ds"], spec, tmp_path / "bf16-queries.zarr", progress=False)
    other = ActivationStore(tmp_path / "bf16-queries.zarr")
    ts = training_set(world)
    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=1, **TUNER)
    mixed = TrainingSet(ts.data, other, ts.corpus, ts.pairs, ts.dev_qrels)
    with pytest.raises(StoreError, match=r"compute_dtype: expected 'bfloat16', this store has 'float32'"):
        train([mixed], cfg, TrainConfig(epochs=1, batch_size=8), tmp_path / "mixed", progress=False)
    train([ts], cfg, TrainConfig(epochs=1, batch_size=8), tmp_path / "run", progress=False)
    with pytest.raises(StoreError, match=r"trained on: compute_dtype: expected 'float32', this store has 'bfloat16'"):
        index_dataset(tmp_path / "run" / "best", other, ts.corpus, list(world["ds"].qrels["test"]),
                      tmp_path / "index", tmp_path / "run.trec", "lmort")
    assert not (tmp_path / "index").exists()


def test_a_document_judged_relevant_to_two_queries_is_never_a_negative(world):
    """In-batch negatives: query i's positive is a negative for query j unless j is also judged relevant to it."""
    from pipeline.tuner.train import read_batch

    ts = training_set(world)
    rows = [r for r in ts.pairs if r["positive_ids"]][:3]
    shared = rows[0]["positive_ids"][0]
    batch = [(rows[0]["query_id"], shared, [], {shared}),
             (rows[1]["query_id"], rows[1]["positive_ids"][0], [], {rows[1]["positive_ids"][0], shared}),
             (rows[2]["query_id"], rows[2]["positive_ids"][0], [], set(rows[2]["positive_ids"]))]
    states = read_batch(ts, batch, [1, 2])
    assert states["targets"].tolist() == [0, 1, 2]
    # query 1 is judged relevant to query 0's positive: masked; nobody else's document is masked
    assert states["false_neg"].tolist() == [[False, False, False], [True, False, False], [False, False, False]]
    tuner = Tuner(TunerConfig(llm_width=32, stream_layer=2, cross_layer=1, **TUNER)).eval()
    loss = info_nce(tuner, states, "cpu")
    unmasked = info_nce(tuner, {**states, "false_neg": torch.zeros(3, 3, dtype=torch.bool)}, "cpu")
    assert torch.isfinite(loss) and loss < unmasked  # a masked negative only removes competition


def test_scaling_curve_trains_each_point_once_from_the_stores(world, tmp_path, monkeypatch):
    """`lmort scale`: nested query samples, at least min_steps each, scored on dev and zero-shot; a rerun trains
    nothing, and the LLM is never loaded."""
    import pipeline.tuner.scaling as sc

    monkeypatch.setattr(FrozenLLM, "__init__", lambda *a, **k: pytest.fail("stage two loaded the LLM"))
    geometry = write_geometry(tmp_path)
    params = tmp_path / "p.yaml"
    params.write_text("tuner: {width: 16, blocks: 1, heads: 2, out_dim: 16}\ntrain: {batch_size: 8, epochs: 1}\n"
                      "scaling: {variants: [lmort, pooled-linear], sizes: [null], queries: [16, all], min_steps: 6}\n")
    args = ["scale", "--stores", str(world["stores"]), "--data", str(world["ds"].folder), "--zero-shot",
            str(world["ds"].folder), "--geometry", str(geometry), "--params", str(params), "--out", str(tmp_path / "s")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    points = sc.read_points(tmp_path / "s")
    assert [(p["variant"], p["queries"]) for p in points] == [
        ("lmort", 16), ("lmort", len(world["ds"].pairs("train"))), ("pooled-linear", 16),
        ("pooled-linear", len(world["ds"].pairs("train")))]
    assert all(p["steps"] >= 6 for p in points)
    small = points[0]
    assert small["epochs_run"] > 1 and small["train"]["max_queries"] == 16  # 16 queries = 2 batches an epoch
    assert set(small["zero_shot"]) == {world["ds"].name}
    assert small["zero_shot_mean"] == pytest.approx(sum(small["zero_shot"].values()) / len(small["zero_shot"]))
    assert (tmp_path / "s" / "scaling.png").stat().st_size > 0
    assert "dev" in json.loads((tmp_path / "s" / "reference.json").read_text())
    monkeypatch.setattr(sc, "train", lambda *a, **k: pytest.fail("a finished point was trained again"))
    assert CliRunner().invoke(main, args).exit_code == 0


def test_layer_sweep_trains_each_pair_once_from_one_store_and_feeds_dev_selection(world, tmp_path, monkeypatch):
    """`lmort sweep`: LMORT per (U, A) pair plus the fusion baselines, all from the one multi-layer store (the LLM
    is never loaded); the rule's rank and the dev pick land in selection.json, which `lmort train` can follow."""
    import pipeline.tuner.scaling as sc
    from pipeline.tuner.sweep import read_grid

    monkeypatch.setattr(FrozenLLM, "__init__", lambda *a, **k: pytest.fail("stage two loaded the LLM"))
    geometry = write_geometry(tmp_path)
    params = tmp_path / "p.yaml"
    params.write_text("tuner: {width: 16, blocks: 1, heads: 2, out_dim: 16}\ntrain: {batch_size: 8, epochs: 1}\n"
                      "sweep: {pairs: [[2, 1], [0, 2]], baselines: [pooled-linear, first-last, scalar-mix], "
                      "min_steps: 4}\n")
    out = tmp_path / "sweep"
    args = ["sweep", "--stores", str(world["stores"]), "--data", str(world["ds"].folder), "--test",
            str(world["ds"].folder), "--geometry", str(geometry), "--params", str(params), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--shard", "1/2"])  # half the points, as a second process would
    assert result.exit_code == 0, result.output
    half = {p["point"] for p in read_grid(out)}
    result = CliRunner().invoke(main, [*args, "--shard", "0/2"])
    assert result.exit_code == 0, result.output
    points = {p["point"]: p for p in read_grid(out)}
    assert half < set(points) and set(points) == {"lmort-u0-a2", "lmort-u2-a1", "first-last", "scalar-mix",
                                                  "pooled-linear-0", "pooled-linear-1", "pooled-linear-2"}
    assert points["lmort-u0-a2"]["tuner"]["stream_layer"] == 0 and points["lmort-u0-a2"]["tuner"]["cross_layer"] == 2
    assert points["first-last"]["layers"] == [0, 2] and points["scalar-mix"]["layers"] == [0, 1, 2]
    assert all(p["steps"] >= 4 and set(p["test"]) == {world["ds"].name} for p in points.values())
    sel = json.loads((out / "selection.json").read_text())
    grid = {pair: points[f"lmort-u{pair[0]}-a{pair[1]}"]["dev_ndcg@10"] for pair in ((0, 2), (2, 1))}
    best = max(grid, key=grid.get)
    assert sel["geometry"] == [2, 1] and sel["dev"] == list(best) and sel["pairs"] == 2
    assert sel["dev_rank"]["rule_rank"] == 1 + (grid[(0, 2)] > grid[(2, 1)])  # ties share a rank
    assert (out / "sweep.png").stat().st_size > 0
    assert json.loads((out / "dev-pick.json").read_text()) == {"dev": sel["dev"]}
    assert "the geometric rule's pair (U, A) = (2, 1) ranks" in (out / "sweep.md").read_text()
    monkeypatch.setattr(sc, "train", lambda *a, **k: pytest.fail("a finished point was trained again"))
    assert CliRunner().invoke(main, args).exit_code == 0
    # layer_selection: dev trains the variant on the sweep's dev pick instead of the rule's pair
    monkeypatch.undo()
    (out / "selection.json").write_text(json.dumps({**sel, "dev": [0, 2]}))
    result = CliRunner().invoke(main, ["train", "--stores", str(world["stores"]), "--data", str(world["ds"].folder),
                                       "--geometry", str(geometry), "--params", str(params), "--layer-selection",
                                       "dev", "--selection", str(out / "selection.json"), "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    trained = json.loads((tmp_path / "t" / "train.json").read_text())["tuner"]
    assert (trained["stream_layer"], trained["cross_layer"]) == (0, 2)
    (out / "selection.json").write_text(json.dumps({**sel, "dev": None}))
    result = CliRunner().invoke(main, ["train", "--stores", str(world["stores"]), "--data", str(world["ds"].folder),
                                       "--geometry", str(geometry), "--params", str(params), "--layer-selection",
                                       "dev", "--selection", str(out / "selection.json"), "--out", str(tmp_path / "u")])
    assert result.exit_code != 0 and "no dev pick" in result.output


def test_layer_selection_takes_the_rule_the_dev_pick_or_an_explicit_pair(tmp_path):
    from pipeline.common.errors import ConfigError
    from pipeline.tuner.train import layer_pair

    sel = tmp_path / "selection.json"
    sel.write_text('{"geometry": [0, 2], "dev": [6, 0]}')
    assert layer_pair("geometry", sel) is None and layer_pair("dev", sel) == (6, 0)
    assert layer_pair("12,3", None) == (12, 3)
    with pytest.raises(ConfigError, match="give geometry, dev or a pair U,A"):
        layer_pair("best", None)
    with pytest.raises(ConfigError, match="not found"):
        layer_pair("dev", tmp_path / "missing.json")


def test_a_finished_point_is_reused_only_for_the_same_inputs(world, tmp_path, monkeypatch):
    """train_point: other test sets are scored again without training; other training pairs train again."""
    import pipeline.tuner.scaling as sc

    ts = training_set(world)
    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=1, **TUNER)
    recipe = TrainConfig(epochs=1, batch_size=8)
    first = sc.train_point([ts], [], cfg, recipe, None, 4, tmp_path / "p", {"variant": "lmort"}, "test")
    assert first["test"] == {} and first["inputs"]["tests"] == []
    monkeypatch.setattr(sc, "train", lambda *a, **k: pytest.fail("trained again for other test sets"))
    again = sc.train_point([ts], [ts], cfg, recipe, None, 4, tmp_path / "p", {"variant": "lmort"}, "test")
    assert set(again["test"]) == {world["ds"].name} and again["steps"] == first["steps"]
    class Retrained(Exception):
        pass

    def retrain(*a, **k):
        raise Retrained

    monkeypatch.setattr(sc, "train", retrain)
    fewer = TrainingSet(ts.data, ts.queries, ts.corpus, ts.pairs[:-8], ts.dev_qrels)
    with pytest.raises(Retrained):  # other training pairs: the finished point is not reused
        sc.train_point([fewer], [ts], cfg, recipe, None, 4, tmp_path / "p", {"variant": "lmort"}, "test")


def test_the_rule_rank_counts_only_strictly_better_pairs_and_the_plan_is_what_counts(tmp_path):
    from pipeline.tuner.sweep import SweepPoint, plan, read_grid, selection

    def point(u, a, dev):
        return {"variant": "lmort", "point": SweepPoint("lmort", u, a).name, "u_layer": u, "a_layer": a,
                "dev_ndcg@10": dev, "test_mean": None}

    points = [point(2, 0, 0.3), point(0, 2, 0.3), point(2, 2, 0.3), point(0, 0, 0.1)]
    sel = selection(points, {"u_layer": 2, "a_layer": 0})
    assert sel["dev_rank"]["rule_rank"] == 1 and sel["dev_rank"]["rule_ties"] == 2
    assert sel["dev"] == [0, 2] and "test_rank" not in sel  # ties broken by the shallower U; no test scores
    assert selection(points, {"u_layer": 5, "a_layer": 5})["dev_rank"]["rule_rank"] is None
    for p in points:  # a folder holding an earlier, larger grid: only the planned points count
        (tmp_path / p["point"]).mkdir()
        (tmp_path / p["point"] / "point.json").write_text(json.dumps(p))
    assert {p["point"] for p in read_grid(tmp_path, plan(None, [0, 2]))} == {p["point"] for p in points}
    assert [p["point"] for p in read_grid(tmp_path, plan(None, [2]))] == ["lmort-u2-a2"]
    assert [p.name for p in plan([0, 2, 6], [], [], ["first-last"])] == ["first-last"]  # [] = no grid


def test_a_sweep_over_layers_the_store_lacks_is_refused():
    from pipeline.tuner.sweep import plan

    assert [p.name for p in plan([0, 2, 4], [0, 4])] == ["lmort-u0-a0", "lmort-u0-a4", "lmort-u4-a0", "lmort-u4-a4"]
    assert len(plan([0, 2, 4], "all")) == 9
    with pytest.raises(ValueError, match=r"sweep layers \[7\] are not in the store"):
        plan([0, 2, 4], pairs=[[0, 7]])
    with pytest.raises(ValueError, match="unknown sweep baselines"):
        plan([0, 2], [0, 2], baselines=["elmo"])


def _commands(world, tmp, out):
    g = write_geometry(tmp)
    p = tmp / "p.yaml"
    p.write_text("tuner: {width: 16, blocks: 1, heads: 2, out_dim: 16}\ntrain: {epochs: 1, batch_size: 8}\n")
    tuner = tmp / "tuner"
    tuner.mkdir(exist_ok=True)
    st, data = str(world["stores"]), str(world["ds"].folder)
    return {
        "train": ["train", "--stores", st, "--data", data, "--geometry", str(g), "--params", str(p), "--out", out],
        "scale": ["scale", "--stores", st, "--data", data, "--geometry", str(g), "--params", str(p), "--out", out],
        "sweep": ["sweep", "--stores", st, "--data", data, "--geometry", str(g), "--params", str(p), "--out", out],
        "index": ["index", "--tuner", str(tuner), "--stores", st, "--data", data, "--system", "x", "--out", out,
                  "--run", str(tmp / "r.trec")],
        "index --run": ["index", "--tuner", str(tuner), "--stores", st, "--data", data, "--system", "x", "--out",
                        str(tmp / "ix"), "--run", out],
        "extract": ["extract", "--model", world["model"], "--data", data, "--layers", "0", "--out", out],
        "analyze": ["analyze", "--model", world["model"], "--data", data, "--out", out],
        "prepare": ["prepare", "--data", data, "--out", out],
        "baselines": ["baselines", "--data", data, "--runs", out],
        "evaluate": ["evaluate", "--runs", str(tmp), "--out", out],
        "report": ["report", "--out", out],
    }


@pytest.mark.parametrize("command", ["train", "scale", "sweep", "index", "index --run", "extract", "analyze", "prepare",
                                     "baselines", "evaluate", "report"])
@pytest.mark.parametrize("where", ["under a file", "full disk"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(world, tmp_path, monkeypatch, command, where):
    import pipeline.common.atomic as atomic

    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "file" / "out") if where == "under a file" else str(tmp_path / "new" / "out")
    if where == "full disk":
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: type("U", (), {"free": 10 << 20})())
    import stages.extract
    import stages.prepare
    import stages.train

    # the long work, where the stages call it (patched in the stage module: a stage first imported under a patch
    # of the library's name would keep the stand-in for later tests)
    for module, name in ((stages.train, "train"), (stages.extract, "extract"), (stages.prepare, "prepare_dataset")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("the long work started"))
    result = CliRunner().invoke(main, _commands(world, tmp_path, out)[command])
    assert result.exit_code != 0 and "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: ")
    if where == "under a file":
        assert out in message and "is a regular file" in message
    else:  # a full disk: the first output checked is named (for index, the index folder before the run file)
        assert "GB free" in message
    assert not (tmp_path / "new").exists()


def test_training_stops_after_patience_evaluations_without_a_better_dev_score(world, tmp_path):
    """With a learning rate of 0 the dev score never improves after epoch 1: patience 2 stops after epoch 3, and
    the kept tuner is epoch 1's."""
    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=0, **TUNER)
    summary = train([training_set(world)], cfg, TrainConfig(epochs=6, batch_size=8, lr=0.0, patience=2, dev_every=1),
                    tmp_path / "run", progress=False)
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1
    assert json.loads((tmp_path / "run" / "best" / "tuner.json").read_text())["epoch"] == 1


def test_a_checkpoint_from_other_settings_is_not_resumed(world, tmp_path, monkeypatch):
    """A checkpoint left by a run with another learning rate is discarded: the new run equals a fresh one."""
    import pipeline.tuner.train as tr

    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=0, **TUNER)
    monkeypatch.setattr(tr, "write_logs", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed after its last epoch: the checkpoint stays
        train([training_set(world)], cfg, TrainConfig(epochs=1, batch_size=8, lr=1e-2), tmp_path / "run",
              progress=False)
    assert (tmp_path / "run" / "checkpoint" / "state.json").exists()
    monkeypatch.undo()
    other = TrainConfig(epochs=1, batch_size=8, lr=1e-3)
    train([training_set(world)], cfg, other, tmp_path / "run", progress=False)
    train([training_set(world)], cfg, other, tmp_path / "fresh", progress=False)
    a = load_file(tmp_path / "run" / "best" / "model.safetensors")
    b = load_file(tmp_path / "fresh" / "best" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_identify_records_every_configured_set_and_its_stores(world, tmp_path):
    """The DVC stage `stores`: one record of every set's stores, which later stages depend on instead of the chunk
    files; a rebuilt store changes it."""
    params = tmp_path / "p.yaml"
    params.write_text(f"datasets: [{world['ds'].folder}]\n")
    out = tmp_path / "stores.json"
    result = CliRunner().invoke(main, ["identify", "--params", str(params), "--stores", str(world["stores"]),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())[world["ds"].name]
    assert set(record["stores"]) == {"queries", "corpus"} and record["prepared"]
    assert record["stores"]["corpus"]["fingerprint"]["layers"] == [0, 1, 2]
    missing = CliRunner().invoke(main, ["identify", "--out", str(out)])
    assert missing.exit_code == 2 and "give --data, or --params" in missing.output
