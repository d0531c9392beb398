"""Run files scored with ir-measures (what `lmort evaluate` writes to metrics.json), and which run files a
configuration owns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..common.command_line import names
from ..common.errors import DataError
from ..common.metrics import evaluate, read_trec_run
from ..common.tables import markdown_table
from ..data.prepare import ensure_prepared
from ..retrieval.baselines import baseline_runs
from ..retrieval.fusion import METHODS, fused_name, fused_systems
from .report import ablation_rows


def configured_systems(params: dict) -> Callable[[str], bool]:
    """Which run files a configuration owns: its tuner variants, its baselines, their fusions with BM25
    (`<system>+bm25`, `<system>+bm25-rrf`) and the reranked first stages (`<system>>rerank`). Run files that an
    earlier configuration left behind (a variant since removed) are not scored."""
    variants = set(params.get("variants", []))
    stems = baseline_runs()
    prefixes = tuple(stems[b] for b in names((str(params.get("baselines", "")),)) if b in stems)
    fused = {fused_name(s, m) for s in fused_systems(params) for m in METHODS}
    reranker = params.get("reranker") or {}
    reranked = {f"{s}>rerank" for s in reranker.get("first_stages", [])} if reranker.get("designs") else set()
    return lambda system: system in variants or system in fused | reranked or system.startswith(prefixes)


def evaluate_runs(datasets: list[str], split: str, runs_dirs: list[Path],
                  keep: Callable[[str], bool] | None = None) -> dict:
    """{data set: {system: {measure: value}}} for every run file under RUNS/<data>/<split>/ (that `keep` takes)."""
    out = {}
    for name in datasets:
        ds = ensure_prepared(name)
        files = sorted(f for d in runs_dirs for f in (Path(d) / ds.name / split).glob("*.trec")
                       if keep is None or keep(f.stem))
        if not files:
            raise DataError(f"no run files for {ds.name}/{split} under {', '.join(map(str, runs_dirs))}")
        out[ds.name] = {f.stem: evaluate(read_trec_run(f), ds.qrels[split]) for f in files}
    return out


def score_table(metrics: dict, measure: str = "nDCG@10") -> str:
    return markdown_table(ablation_rows(metrics, measure=measure), ["system", *metrics, "average"])
