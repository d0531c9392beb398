"""`lmort evaluate`: score run files with ir-measures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.metrics import MEASURES, evaluate, read_trec_run
from pipeline.common.params import load_params
from pipeline.common.tables import markdown_table
from pipeline.data.prepare import ensure_prepared
from pipeline.evaluation.report import ablation_rows
from pipeline.retrieval.baselines import baseline_runs
from pipeline.retrieval.fusion import METHODS, fused_name, fused_systems


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
            raise click.ClickException(f"no run files for {ds.name}/{split} under {', '.join(map(str, runs_dirs))}")
        out[ds.name] = {f.stem: evaluate(read_trec_run(f), ds.qrels[split]) for f in files}
    return out


def score_table(metrics: dict, measure: str = "nDCG@10") -> str:
    return markdown_table(ablation_rows(metrics, measure=measure), ["system", *metrics, "average"])


@click.command("evaluate")
@click.option("--data", "datasets", multiple=True, help="Data sets to score [every one with run files].")
@click.option("--split", default="test", show_default=True)
@click.option("--runs", "runs_dirs", type=click.Path(path_type=Path, exists=True), multiple=True, required=True,
              help="Folder(s) of RUNS/<data>/<split>/<system>.trec.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="metrics.json (Markdown beside it).")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Score only this configuration's eval_sets, variants and baselines (else every run file).")
@friendly_errors
def evaluate_command(datasets, split, runs_dirs, out, params_file) -> None:
    """Score run files with ir-measures: nDCG@10, Recall@100, MRR@10, per set and on average."""
    check_writable(out)
    keep = None
    if params_file:
        params = load_params(params_file)
        keep, datasets = configured_systems(params), datasets or tuple(params.get("eval_sets", ()))
    found = sorted({p.parent.name for d in runs_dirs for p in Path(d).glob(f"*/{split}")})
    metrics = evaluate_runs(names(datasets) or found, split, list(runs_dirs), keep)
    md = "".join(f"### {m} ({split})\n\n{score_table(metrics, m)}\n" for m in MEASURES)
    atomic_file(out, lambda tmp: tmp.write_text(json.dumps(metrics, indent=1)))
    atomic_file(out.with_suffix(".md"), lambda tmp: tmp.write_text(md))
    click.echo(md)
