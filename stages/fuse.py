"""`lmort fuse`: each configured dense system's run fused with BM25's, the fusion chosen on dev."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.config import FUSION, run_config, section
from pipeline.common.errors import DataError
from pipeline.common.metrics import write_trec_run
from pipeline.common.params import load_params
from pipeline.common.tables import markdown_table
from pipeline.data.prepare import ensure_prepared
from pipeline.retrieval.fusion import (
    CHOICE_COLUMNS,
    METHODS,
    check_same_corpus,
    choice_rows,
    choose,
    fuse,
    fused_name,
    fused_systems,
    significance,
    tuning_set,
)
from pipeline.retrieval.runs import read_checked_run


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
            click.echo(f"{ds.name}: {name} chosen on {picked.tuned_on} "
                       f"({'weight ' + str(picked.dense_weight) if method == 'wsum' else 'k ' + str(picked.rrf_k)}"
                       f"; dev nDCG@10 {picked.dev_fused:.4f} against BM25's {picked.dev_bm25:.4f}, "
                       f"p {picked.dev_p:.2g}"
                       f"{'; not significant, so BM25 alone' if picked.guarded else ''})")
    per_set["significance"] = significance(ds.qrels[split], tested, max_p=max_p)
    return per_set


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
