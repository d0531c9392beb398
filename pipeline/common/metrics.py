"""Retrieval metrics through ir-measures (pytrec_eval underneath) and TREC run files."""

from __future__ import annotations

import math
from pathlib import Path

import ir_measures
from ir_measures import MRR, R, nDCG

from .atomic import atomic_file

MEASURES = {"nDCG@10": nDCG @ 10, "Recall@100": R @ 100, "MRR@10": MRR @ 10}

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def _judged(run: Run, qrels: Qrels) -> tuple[Qrels, Run]:
    """The queries with a relevant document, and the run over exactly those: ir-measures skips a query without
    results, so each such query gets an impossible document and counts as 0."""
    judged = {q: d for q, d in qrels.items() if any(g > 0 for g in d.values())}
    return judged, {q: (run.get(q) or {"__none__": 0.0}) for q in judged}


def evaluate(run: Run, qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, Recall@100 and MRR@10 over the judged queries (a query missing from the run scores 0)."""
    qrels, run = _judged(run, qrels)
    agg = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, run)
    return {name: float(agg[m]) for name, m in MEASURES.items()}


def per_query_ndcg(run: Run, qrels: Qrels) -> dict[str, float]:
    """nDCG@10 of each judged query, on the same terms as `evaluate` (what paired tests and fusion choices read)."""
    qrels, run = _judged(run, qrels)
    scores = {q: 0.0 for q in qrels}
    for m in ir_measures.iter_calc([MEASURES["nDCG@10"]], qrels, run):
        scores[m.query_id] = float(m.value)
    return scores


def mean_or_none(values: list) -> float | None:
    """The mean, or None when there is nothing to average or a value is missing (a system without every set gets
    no average)."""
    return sum(values) / len(values) if values and None not in values else None


def write_trec_run(run: Run, path: Path, tag: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            for qid, docs in run.items():
                for rank, (did, s) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), 1):
                    f.write(f"{qid} Q0 {did} {rank} {s:.6f} {tag}\n")

    atomic_file(path, write)


def read_trec_run(path: Path) -> Run:
    """A TREC run file (qid Q0 docid rank score tag); a malformed line is a DataError naming file and line."""
    from .errors import DataError

    run: Run = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise DataError(f"{path}:{lineno}: expected 6 fields (qid Q0 docid rank score tag), got {len(parts)}")
            qid, _, did, _, score, _ = parts
            try:
                value = float(score)
            except ValueError:
                raise DataError(f"{path}:{lineno}: field 'score' is not a number: {score!r}") from None
            if not math.isfinite(value):
                raise DataError(f"{path}:{lineno}: field 'score' must be finite, got {score!r}")
            run.setdefault(qid, {})[did] = value
    return run
