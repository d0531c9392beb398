"""Hybrid retrieval: a dense run fused with BM25's, its weight chosen on dev, never on a test split.

Why min-max: each query's scores are mapped to [0, 1] before the weighted sum. The dense scores are cosines in a
narrow band and BM25's are unbounded and heavy-tailed, so raw scores cannot be summed; z-scores assume a roughly
normal spread over the top 100, which BM25's long tail is not, and they let one outlier set the scale. Min-max is
the convention of the hybrid-retrieval literature and of the probes that motivated this (DESIGN.md). RRF, which
ignores scores entirely, is computed beside it as the score-free reference.

Why a significance guard: the dense weight is the best of 21 tried on dev, so a gain of a few thousandths there is
mostly the choice fitting dev's noise, and a weak dense side then drags a set it cannot help below BM25 (the full
protocol's nfcorpus, cacm and vaswani_npl lost 0.006-0.020 that way). A weight is kept only when the fused dev
run beats BM25's in a paired t-test at `max_p` (`fusion.max_p`); otherwise the weight is 0 and the fused system
is BM25 alone. RRF has no weight that leaves BM25 alone, so it stays unguarded (the dev p is reported for both).

The fusion is the two lines of arithmetic above; what decides it is measured with the project's metric of record
(ir-measures' nDCG@10, the number every report prints) and tested with scipy's paired t-test. ranx does all three,
but its numba kernels cost about a minute of compilation in every fresh environment and seconds per weight tried
(its typed dictionaries), for the same arithmetic.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from ..common.command_line import names
from ..common.config import FUSION, section
from ..common.errors import DataError
from ..common.metrics import Qrels, Run, per_query_ndcg, write_trec_run
from .runs import read_checked_run

log = logging.getLogger(__name__)

NORMALISATION = "min-max"
METHODS = {"wsum": "+bm25", "rrf": "+bm25-rrf"}  # method: suffix of the fused system's name
WEIGHT_STEP = 0.05  # the dense weight's grid on dev: 0, 0.05, ..., 1 (0 leaves BM25 alone)


def fused_systems(params: dict) -> list[str]:
    """The dense systems a configuration fuses with BM25: its `fusion.variants` (tuners) and `fusion.baselines`."""
    fusion = section(params, "fusion")
    return [*fusion.variants, *fusion.baselines]


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
    dev_p: float = 1.0  # paired t-test of the tuned fused run against BM25 on dev
    guarded: bool = False  # True: dev's best weight was not significantly above BM25, so 0 was kept

    def as_dict(self) -> dict:
        return asdict(self)


def mean_ndcg(run: Run, qrels: Qrels) -> float:
    scores = per_query_ndcg(run, qrels)
    return sum(scores.values()) / max(1, len(scores))


def _min_max(docs: dict[str, float]) -> dict[str, float]:
    if not docs:
        return {}
    lo, hi = min(docs.values()), max(docs.values())
    return {d: (s - lo) / (hi - lo) if hi > lo else 1.0 for d, s in docs.items()}


def _ranks(docs: dict[str, float]) -> dict[str, int]:
    return {d: r for r, (d, _) in enumerate(sorted(docs.items(), key=lambda x: (-x[1], x[0])), 1)}


def tuning_set(data: str, params: dict) -> tuple[str, str] | None:
    """Where the fusion of `data` is chosen: its own dev split when it is a training set (in-domain), else the
    configuration's zero-shot dev collection, which it must never test on (None: the configuration names none,
    and the zero-shot set is not fused)."""
    fusion = section(params, "fusion")
    if data in names((str(params.get("train_sets", "")),)):
        return data, fusion.dev_split
    zero_shot = fusion.zero_shot_dev
    if not zero_shot:
        return None
    if len(zero_shot) > 1:
        raise DataError(f"fusion.zero_shot_dev names {len(zero_shot)} collections; name one")
    zero_shot = zero_shot[0]
    if zero_shot in params.get("eval_sets", []):
        raise DataError(f"fusion.zero_shot_dev {zero_shot} is also an eval set: its weights would be chosen on "
                        "a test split")
    return zero_shot, fusion.zero_shot_split


def check_same_queries(dense: Run, bm25: Run, what: str) -> None:
    """Runs handed to fusion must be of the same set and split: one run's queries within the other's (a run leaves
    out a query it retrieved nothing for: bm25s finds no term of 26 of nfcorpus' dev queries), over one corpus."""
    small, large = sorted((set(dense), set(bm25)), key=len)
    if not small <= large:
        only = sorted(set(dense) ^ set(bm25))[:3]
        raise DataError(f"{what}: the dense and BM25 runs have different queries ({len(dense)} against {len(bm25)}, "
                        f"e.g. {only}): runs of different sets or splits")


def check_same_corpus(dense: Run, bm25: Run, what: str) -> None:
    """Whole runs over one corpus share documents (one question's two top 100s may not: `fuse` does not ask)."""
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
    """The fused run (top k per query). wsum: dense_weight * minmax(dense) + (1 - dense_weight) * minmax(bm25), per
    query, a document missing from one run scoring 0 there (weight 0 or 1: that run alone, as it ranks); rrf: the sum
    over both runs of 1 / (rrf_k + rank)."""
    check_same_queries(dense, bm25, "fuse")
    out = {}
    for q in [*dense, *(q for q in bm25 if q not in dense)]:  # a query one run found nothing for: the other ranks
        if method == "wsum" and dense_weight in (0, 1):
            # one run alone, as it ranks: min-max maps its last document to 0, a tie with what it never retrieved
            alone, other = (bm25, dense) if dense_weight == 0 else (dense, bm25)
            scores = dict(alone[q]) if alone.get(q) else _min_max(other.get(q, {}))
        elif method == "wsum":
            a, b = _min_max(dense.get(q, {})), _min_max(bm25.get(q, {}))
            scores = {d: dense_weight * a.get(d, 0.0) + (1 - dense_weight) * b.get(d, 0.0) for d in a.keys() | b}
        elif method == "rrf":
            a, b = _ranks(dense.get(q, {})), _ranks(bm25.get(q, {}))
            scores = {d: sum(1 / (rrf_k + r[d]) for r in (a, b) if d in r) for d in a.keys() | b}
        else:
            raise ValueError(f"unknown fusion method {method!r} ({', '.join(METHODS)})")
        out[q] = dict(sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:k])
    return out


def choose(dense_dev: Run, bm25_dev: Run, qrels_dev: Qrels, method: str, tuned_on: str,
           max_p: float = FUSION.max_p) -> FusionChoice:
    """Pick the method's parameter by nDCG@10 on dev: the dense weight on a 0.05 grid from 0 to 1 (ties go to the
    smaller weight, the one closer to BM25 alone), or RRF's k from 10 to 100 (ties to 60, the usual constant).
    A weight whose fused dev run does not beat BM25's with paired-t-test p below `max_p` falls back to 0."""
    check_same_queries(dense_dev, bm25_dev, f"fusion dev runs on {tuned_on}")
    check_same_corpus(dense_dev, bm25_dev, f"fusion dev runs on {tuned_on}")
    if method == "wsum":
        grid = [round(i * WEIGHT_STEP, 4) for i in range(int(round(1 / WEIGHT_STEP)) + 1)]
        scores = {a: mean_ndcg(fuse(dense_dev, bm25_dev, "wsum", a), qrels_dev) for a in grid}
        best = max(grid, key=lambda a: (round(scores[a], 6), -a))
        fused = fuse(dense_dev, bm25_dev, "wsum", best)
        dense_weight, rrf_k = best, None
    else:
        grid = list(range(10, 101, 10))
        scores = {k: mean_ndcg(fuse(dense_dev, bm25_dev, "rrf", rrf_k=k), qrels_dev) for k in grid}
        best = max(grid, key=lambda k: (round(scores[k], 6), -abs(k - 60)))
        fused = fuse(dense_dev, bm25_dev, "rrf", rrf_k=best)
        dense_weight, rrf_k = None, best
    delta, p = paired_difference(fused, bm25_dev, qrels_dev)
    guarded = method == "wsum" and best > 0 and (delta <= 0 or p >= max_p)
    if guarded:
        dense_weight, best = 0.0, 0.0
    return FusionChoice(method, dense_weight, rrf_k, tuned_on, scores[best], mean_ndcg(dense_dev, qrels_dev),
                        mean_ndcg(bm25_dev, qrels_dev), p, guarded)


def paired_difference(run: Run, baseline: Run, qrels: Qrels) -> tuple[float, float]:
    """(mean nDCG@10 of `run` minus `baseline`'s, two-sided paired t-test p) over the baseline's judged queries."""
    return paired_t(per_query_ndcg(run, qrels), per_query_ndcg(baseline, qrels))


def paired_t(scores: dict[str, float], baseline: dict[str, float]) -> tuple[float, float]:
    """(mean of `scores` minus the baseline's, two-sided paired t-test p (scipy)) over the baseline's keys."""
    from scipy.stats import ttest_rel

    keys = sorted(baseline)
    a, b = [scores[k] for k in keys], [baseline[k] for k in keys]
    return (sum(a) - sum(b)) / max(1, len(keys)), 1.0 if a == b else float(ttest_rel(a, b).pvalue)


def significance(qrels: Qrels, runs: dict[str, Run], baseline: str = "bm25", max_p: float = FUSION.max_p) -> dict:
    """{system: {"delta": nDCG@10 minus the baseline's, "p": two-sided paired t-test p-value over the judged
    queries (scipy), "significant": p < max_p}} for every other system, on the same queries."""
    out = {}
    for system, run in runs.items():
        if system == baseline:
            continue
        delta, p = paired_difference(run, runs[baseline], qrels)
        out[system] = {"delta": delta, "p": p, "significant": p < max_p}
    return out


CHOICE_COLUMNS = ["set", "system", "chosen on", "dense weight", "rrf k", "dev", "dev bm25", "dev dense", "dev p",
                  "guarded", "test minus bm25", "p", "significant"]


def chosen_with_tests(report: dict):
    """Each (set, its entry, system, dev's choice, the system's paired test against BM25 on the test split) of a
    report of `lmort fuse` or `lmort rerank` ({set: {"systems": {...}, "significance": {...}}})."""
    for data, per in report.items():
        tests = per.get("significance", {})
        for name, choice in per.get("systems", {}).items():
            yield data, per, name, choice, tests.get(name, {})


def choice_rows(fusion_report: dict) -> list[dict]:
    """One row per fused system and set of `lmort fuse`'s fusion.json: where and what dev chose, the dev test behind
    the guard, and the test difference to BM25 with its paired t-test (fusion.md and the report print these)."""
    return [{"set": data, "system": name, "chosen on": c["tuned_on"], "dense weight": c["dense_weight"],
             "rrf k": c["rrf_k"], "dev": c["dev_fused"], "dev bm25": c["dev_bm25"], "dev dense": c["dev_dense"],
             "dev p": f"{c['dev_p']:.2g}" if "dev_p" in c else None, "guarded": "yes" if c.get("guarded") else "",
             "test minus bm25": s.get("delta"), "p": f"{s['p']:.2g}" if s else None,
             "significant": ("yes" if s.get("significant") else "no") if s else None}
            for data, _, name, c, s in chosen_with_tests(fusion_report)]


class FusedRetriever:
    """A retriever (retrievers.py): `dense` (a `DenseRetriever`) and `sparse` (BM25) fused by a min-max weighted
    sum at the dense weight dev chose (`lmort fuse`); each side is searched `depth` deep, as the pipeline's fused
    runs are. `vectors`: the dense side's query vectors, already encoded."""

    def __init__(self, dense, sparse, dense_weight: float, depth: int = 100):
        self.dense, self.sparse, self.dense_weight, self.depth = dense, sparse, dense_weight, depth
        self.name = f"{dense.name}+{sparse.name}"

    def search(self, queries: dict[str, str], k: int = 100, vectors=None) -> Run:
        depth = max(k, self.depth)
        return fuse(self.dense.search(queries, depth, vectors), self.sparse.search(queries, depth), "wsum",
                    self.dense_weight, k=k)


def fuse_set(ds, dev, tune_split: str, split: str, systems: list[str], runs_dirs, dev_dirs, out: Path,
             max_p: float = FUSION.max_p) -> dict:
    """Every system fused with BM25 on one evaluation set, each method's weight or k chosen on `dev`/`tune_split`
    (a weight not significantly above BM25 there at `max_p` falls back to 0); writes the fused runs and returns
    what was chosen, with the paired tests against BM25 on `split`."""
    bm25_dev = read_checked_run(dev_dirs, dev.name, tune_split, "bm25", dev.qrels[tune_split])
    bm25 = read_checked_run(runs_dirs, ds.name, split, "bm25", ds.qrels[split])
    tested = {"bm25": bm25}
    per_set: dict = {"tuned_on": f"{dev.name}/{tune_split}", "systems": {}}
    for system in systems:
        dense_dev = read_checked_run(dev_dirs, dev.name, tune_split, system, dev.qrels[tune_split])
        dense = read_checked_run(runs_dirs, ds.name, split, system, ds.qrels[split])
        check_same_corpus(dense, bm25, f"{system} and bm25 on {ds.name}/{split}")
        tested[system] = dense
        for method in METHODS:
            picked = choose(dense_dev, bm25_dev, dev.qrels[tune_split], method, f"{dev.name}/{tune_split}",
                            max_p)
            name = fused_name(system, method)
            run = fuse(dense, bm25, method, picked.dense_weight, picked.rrf_k)
            write_trec_run(run, Path(out) / "runs" / ds.name / split / f"{name}.trec", name)
            dev_run = fuse(dense_dev, bm25_dev, method, picked.dense_weight, picked.rrf_k)  # what a reranker tunes on
            write_trec_run(dev_run, Path(out) / "dev-runs" / dev.name / tune_split / f"{name}.trec", name)
            tested[name] = run
            per_set["systems"][name] = picked.as_dict()
            log.info(f"{ds.name}: {name} chosen on {picked.tuned_on} "
                       f"({'weight ' + str(picked.dense_weight) if method == 'wsum' else 'k ' + str(picked.rrf_k)}"
                       f"; dev nDCG@10 {picked.dev_fused:.4f} against BM25's {picked.dev_bm25:.4f}, "
                       f"p {picked.dev_p:.2g}"
                       f"{'; not significant, so BM25 alone' if picked.guarded else ''})")
    per_set["significance"] = significance(ds.qrels[split], tested, max_p=max_p)
    return per_set
