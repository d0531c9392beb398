"""`lmort evaluate`: score run files with ir-measures."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.metrics import MEASURES
from pipeline.common.params import load_params
from pipeline.evaluation.scores import configured_systems, evaluate_runs, score_table


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
