"""`lmort baselines`: BM25, all-MiniLM-L6-v2 and each stored raw pooled layer as TREC runs."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.activations.store import check_compatible, open_stores
from pipeline.common.atomic import check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.config import RUN
from pipeline.common.metrics import evaluate, write_trec_run
from pipeline.data.prepare import ensure_prepared


@click.command("baselines")
@click.option("--data", required=True)
@click.option("--split", default=RUN.eval_split, show_default=True)
@click.option("--also-split", help="Also write this split's runs where the set has it (the fusion's dev split: "
              "the corpus is encoded once for both).")
@click.option("--stores", type=click.Path(path_type=Path, exists=True), help="For the raw pooled-layer baselines.")
@click.option("--systems", default=RUN.baselines, show_default=True)
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path), required=True,
              help="Run files go to RUNS/<data>/<split>/<system>.trec.")
@friendly_errors
def command(data, split, also_split, stores, systems, runs_dir) -> None:
    """Write TREC runs of BM25, all-MiniLM-L6-v2 and each stored raw pooled layer."""
    check_writable(runs_dir)
    from pipeline.retrieval import baselines

    wanted = systems.split(",")  # bad input is one line before any work
    unknown = [s for s in wanted if s not in baselines.BASELINES and s != "raw"]
    if unknown:
        raise click.UsageError(f"--systems {','.join(unknown)}: the baselines are "
                               f"{', '.join([*baselines.BASELINES, 'raw'])}")
    if "raw" in wanted and not stores:
        raise click.UsageError("raw pooled-layer baselines need --stores")
    ds = ensure_prepared(data)
    splits = [split, *([also_split] if also_split and also_split in ds.qrels and also_split != split else [])]
    qids = [q for s in splits for q in ds.qrels[s]]
    runs = {}
    for system in (s for s in baselines.BASELINES if s in wanted):  # the registry's order: BM25 first
        runs[baselines.BASELINES[system].name] = baselines.baseline_run(system, ds, qids)
    if "raw" in wanted:
        queries, corpus = open_stores(stores, ds.name)
        check_compatible([queries, corpus])
        for layer, run in baselines.raw_layer_runs(queries, corpus, qids).items():
            runs[f"{baselines.RAW_LAYER_RUNS}{layer}"] = run
    for s in splits:
        for name, run in runs.items():
            part = {q: run.get(q, {}) for q in ds.qrels[s]}
            write_trec_run(part, Path(runs_dir) / ds.name / s / f"{name}.trec", name)
            click.echo(f"{name} on {s}: nDCG@10 {evaluate(part, ds.qrels[s])['nDCG@10']:.4f}")
