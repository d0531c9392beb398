"""`lmort fuse`: each configured dense system's run fused with BM25's, the fusion chosen on dev."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.config import run_config, section
from pipeline.common.errors import DataError
from pipeline.common.params import load_params
from pipeline.common.tables import markdown_table
from pipeline.data.prepare import ensure_prepared
from pipeline.retrieval.fusion import CHOICE_COLUMNS, choice_rows, fuse_set, fused_systems, tuning_set


@click.command("fuse")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="The configuration (eval_sets, train_sets, fusion.*).")
@click.option("--runs", "runs_dirs", type=click.Path(path_type=Path, exists=True), multiple=True, required=True,
              help="Folders of RUNS/<data>/<split>/<system>.trec: the runs to fuse, on the eval split.")
@click.option("--dev-runs", "dev_dirs", type=click.Path(path_type=Path, exists=True), multiple=True, required=True,
              help="Folders of the same systems' runs where the fusion is chosen (dev splits, the zero-shot dev).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Writes OUT/runs/<data>/<split>/<system>+bm25[-rrf].trec, the same fusions of the dev runs under "
              "OUT/dev-runs/, OUT/fusion.json and OUT/fusion.md.")
@friendly_errors
def command(params_file, runs_dirs, dev_dirs, out) -> None:
    """Fuse each `fusion.variants` and `fusion.baselines` run with BM25's (min-max weighted sum and RRF), chosen
    on dev."""
    check_writable(out)
    params = load_params(params_file)
    systems = fused_systems(params)
    split = run_config(params).eval_split
    report: dict = {}
    for data in params.get("eval_sets", []):
        ds = ensure_prepared(data)
        tuning = tuning_set(data, params)
        if tuning is None:
            click.echo(f"{ds.name}: not fused (zero-shot, and the configuration names no fusion.zero_shot_dev)")
            continue
        tune_data, tune_split = tuning
        dev = ensure_prepared(tune_data)
        if tune_split not in dev.qrels:
            raise DataError(f"{dev.name} has no {tune_split} split to choose the fusion of {data} on")
        report[ds.name] = fuse_set(ds, dev, tune_split, split, systems, runs_dirs, dev_dirs, out,
                                   section(params, "fusion").max_p)
    md = markdown_table(choice_rows(report), CHOICE_COLUMNS, floatfmt=".3f")
    atomic_file(Path(out) / "fusion.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    atomic_file(Path(out) / "fusion.md", lambda tmp: tmp.write_text(md))
    click.echo(md)
