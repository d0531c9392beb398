"""Hybrid retrieval: a dense run fused with BM25's, its weight chosen on dev, never on a test split (ranx).

Why min-max: each query's scores are mapped to [0, 1] before the weighted sum. The dense scores are cosines in a
narrow band and BM25's are unbounded and heavy-tailed, so raw scores cannot be summed; z-scores assume a roughly
normal spread over the top 100, which BM25's long tail is not, and they let one outlier set the scale. Min-max is
the convention of the hybrid-retrieval literature and of the probes that motivated this (issue 24). RRF, which
ignores scores entirely, is computed beside it as the score-free reference.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass

from .data import DataError
from .metrics import Qrels, Run

NORMALISATION = "min-max"
METHODS = {"wsum": "+bm25", "rrf": "+bm25-rrf"}  # ranx method: suffix of the fused system's name
WEIGHT_STEP = 0.05  # the dense weight's grid on dev: 0, 0.05, ..., 1 (0 leaves BM25 alone)

log = logging.getLogger(__name__)


def fused_systems(params: dict) -> list[str]:
    """The dense systems a configuration fuses with BM25: its `fusion.variants` (tuners) and `fusion.baselines`."""
    fusion = params.get("fusion") or {}
    return [*(fusion.get("variants") or []), *(fusion.get("baselines") or [])]


def fused_name(system: str, method: str = "wsum") -> str:
    """`lmort` -> `lmort+bm25` (weighted sum) or `lmort+bm25-rrf`."""
    return system + METHODS[method]


@dataclass(frozen=True)
class FusionChoice:
    """What dev chose for one dense system: the method's parameters and the dev scores behind the choice."""

    method: str
    dense_weight: float | None  # wsum: the dense side's weight (BM25 gets 1 - it)
    rrf_k: int | None  # rrf: the rank constant
    tuned_on: str  # "<set>/<split>": where the choice was made
    dev_fused: float
    dev_dense: float
    dev_bm25: float

    def as_dict(self) -> dict:
        return asdict(self)


def _ranx_run(run: Run, name: str, queries=None):
    """A ranx Run; with `queries`, exactly those (a query without results scores 0, as in `metrics.evaluate`)."""
    from ranx import Run as RanxRun

    if queries is not None:
        run = {q: run.get(q) or {"__none__": 0.0} for q in queries}
    return RanxRun.from_dict({q: docs for q, docs in run.items() if docs}, name=name)


def _ranx_qrels(qrels: Qrels):
    from ranx import Qrels as RanxQrels

    return RanxQrels.from_dict({q: {d: g for d, g in docs.items() if g > 0} for q, docs in qrels.items()
                                if any(g > 0 for g in docs.values())})


def check_same_queries(dense: Run, bm25: Run, what: str) -> None:
    """Runs handed to fusion must be of the same set and split: the same queries, over the same corpus."""
    if set(dense) != set(bm25):
        only = sorted(set(dense) ^ set(bm25))[:3]
        raise DataError(f"{what}: the dense and BM25 runs have different queries ({len(dense)} against {len(bm25)}, "
                        f"e.g. {only}): runs of different sets or splits")
    dense_docs = {d for docs in dense.values() for d in docs}
    bm25_docs = {d for docs in bm25.values() for d in docs}
    if dense_docs and bm25_docs and not dense_docs & bm25_docs:
        raise DataError(f"{what}: the dense and BM25 runs share no document: runs over different corpora")


def check_run_of(run: Run, qrels: Qrels, what: str) -> None:
    """A run must answer the queries of the split it is named after: every one of its queries judged there."""
    stray = sorted(set(run) - set(qrels))
    if stray:
        raise DataError(f"{what}: {len(stray)} of its {len(run)} queries are not judged in this split (e.g. "
                        f"{stray[0]}): a run of another set or split")


def fuse(dense: Run, bm25: Run, method: str, dense_weight: float | None = None, rrf_k: int | None = None,
         k: int = 100) -> Run:
    """The fused run (top k per query): wsum = dense_weight * minmax(dense) + (1 - dense_weight) * minmax(bm25)
    per query; rrf = sum of 1 / (rrf_k + rank)."""
    from ranx import fuse as ranx_fuse

    check_same_queries(dense, bm25, "fuse")
    params = {"weights": [dense_weight, 1 - dense_weight]} if method == "wsum" else {"k": rrf_k}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's uint64 -> int64 cast notice inside ranx
        fused = ranx_fuse(runs=[_ranx_run(dense, "dense"), _ranx_run(bm25, "bm25")], norm=NORMALISATION,
                          method=method, params=params).to_dict()
    return {q: dict(sorted(fused.get(q, {}).items(), key=lambda x: -x[1])[:k]) for q in dense}


def choose(dense_dev: Run, bm25_dev: Run, qrels_dev: Qrels, method: str, tuned_on: str) -> FusionChoice:
    """Pick the method's parameters by nDCG@10 on dev (ranx.optimize_fusion: the dense weight on a 0.05 grid
    from 0 to 1, or RRF's k); ties go to the smaller dense weight, the one closer to BM25 alone."""
    from ranx import evaluate, optimize_fusion

    check_same_queries(dense_dev, bm25_dev, f"fusion dev runs on {tuned_on}")
    qrels = _ranx_qrels(qrels_dev)
    judged = list(qrels.keys())
    runs = [_ranx_run(dense_dev, "dense", judged), _ranx_run(bm25_dev, "bm25", judged)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "wsum":
            grid = [round(i * WEIGHT_STEP, 4) for i in range(int(round(1 / WEIGHT_STEP)) + 1)]
            scores = {a: evaluate(qrels, _ranx_run(fuse(dense_dev, bm25_dev, "wsum", a), "fused", judged),
                               "ndcg@10")
                      for a in grid}
            best = max(grid, key=lambda a: (round(scores[a], 6), -a))
            dense_weight, rrf_k, fused = best, None, scores[best]
        else:
            params = optimize_fusion(qrels=qrels, runs=runs, norm=NORMALISATION, method="rrf", metric="ndcg@10",
                                     show_progress=False)
            dense_weight, rrf_k = None, int(params["k"])
            fused = evaluate(qrels, _ranx_run(fuse(dense_dev, bm25_dev, "rrf", rrf_k=rrf_k), "fused", judged),
                             "ndcg@10")
        dense, bm25 = (float(evaluate(qrels, r, "ndcg@10")) for r in runs)
    return FusionChoice(method, dense_weight, rrf_k, tuned_on, float(fused), dense, bm25)


def significance(qrels: Qrels, runs: dict[str, Run], baseline: str = "bm25", max_p: float = 0.05) -> dict:
    """{system: {"delta": nDCG@10 minus the baseline's, "p": two-sided paired t-test p-value, "significant"}}
    for every system against the baseline, on the same queries (ranx.compare)."""
    from ranx import compare

    qrels_rx = _ranx_qrels(qrels)
    names = [baseline, *[s for s in runs if s != baseline]]
    rx = [_ranx_run(runs[s], s, list(qrels_rx.keys())) for s in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = compare(qrels=qrels_rx, runs=rx, metrics=["ndcg@10"], stat_test="student", max_p=max_p).to_dict()
    base = report[baseline]["scores"]["ndcg@10"]
    out = {}
    for s in names[1:]:
        p = float(report[baseline]["comparisons"][s]["ndcg@10"])
        out[s] = {"delta": float(report[s]["scores"]["ndcg@10"] - base), "p": p, "significant": p < max_p}
    return out
