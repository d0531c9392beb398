"""`lmort baselines` (BM25, MiniLM, raw pooled layers as TREC runs) and `lmort evaluate` (ir-measures)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.metrics import MEASURES, evaluate, markdown_table, read_trec_run, write_trec_run
from pipeline.params import open_stores
from pipeline.prepare import ensure_prepared
from pipeline.report import ablation_rows

from .common import friendly_errors, names


@click.command("baselines")
@click.option("--data", required=True)
@click.option("--split", default="test", show_default=True)
@click.option("--stores", type=click.Path(path_type=Path, exists=True), help="For the raw pooled-layer baselines.")
@click.option("--systems", default="bm25,minilm,raw", show_default=True)
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path), required=True,
              help="Run files go to RUNS/<data>/<split>/<system>.trec.")
@friendly_errors
def baselines_command(data, split, stores, systems, runs_dir) -> None:
    """Write TREC runs of BM25, all-MiniLM-L6-v2 and each stored raw pooled layer."""
    from pipeline import baselines

    ds = ensure_prepared(data)
    qids = list(ds.qrels[split])
    folder = Path(runs_dir) / ds.name / split
    wanted = systems.split(",")
    runs = {}
    if "bm25" in wanted:
        runs["bm25"] = baselines.bm25_run(ds, qids)
    if "minilm" in wanted:
        runs["minilm-l6"] = baselines.minilm_run(ds, qids)
    if "raw" in wanted:
        if not stores:
            raise click.UsageError("raw pooled-layer baselines need --stores")
        queries, corpus = open_stores(stores, ds.name)
        for layer, run in baselines.raw_layer_runs(queries, corpus, qids).items():
            runs[f"raw-layer-{layer}"] = run
    for name, run in runs.items():
        write_trec_run(run, folder / f"{name}.trec", name)
        click.echo(f"{name}: nDCG@10 {evaluate(run, ds.qrels[split])['nDCG@10']:.4f}")


def evaluate_runs(datasets: list[str], split: str, runs_dirs: list[Path]) -> dict:
    """{data set: {system: {measure: value}}} for every run file under RUNS/<data>/<split>/."""
    out = {}
    for name in datasets:
        ds = ensure_prepared(name)
        files = sorted(f for d in runs_dirs for f in (Path(d) / ds.name / split).glob("*.trec"))
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
@friendly_errors
def evaluate_command(datasets, split, runs_dirs, out) -> None:
    """Score every run file with ir-measures: nDCG@10, Recall@100, MRR@10, per set and on average."""
    found = sorted({p.parent.name for d in runs_dirs for p in Path(d).glob(f"*/{split}")})
    metrics = evaluate_runs(names(datasets) or found, split, list(runs_dirs))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    md = "".join(f"### {m} ({split})\n\n{score_table(metrics, m)}\n" for m in MEASURES)
    out.with_suffix(".md").write_text(md)
    click.echo(md)
