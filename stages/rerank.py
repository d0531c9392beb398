"""`lmort rerank` and `lmort rerank-run`: first-stage runs reordered by the reranker from the passages' stored states:
the LLM never runs over a passage."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_dir, check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.params import load_params

RUNS = click.Path(path_type=Path, exists=True)


@click.command("rerank")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default="params.yaml", show_default=True, help="The configuration (eval_sets, reranker.*, fusion.*).")
@click.option("--reranker", "reranker_dir", type=click.Path(path_type=Path), required=True,
              help="`lmort train-reranker`'s folder (chosen.json names the design dev kept).")
@click.option("--stores", type=click.Path(path_type=Path), required=True, help="Folder of <set>/{queries,corpus}.zarr.")
@click.option("--runs", "runs_dirs", type=RUNS, multiple=True, required=True,
              help="Folders of RUNS/<data>/<split>/<system>.trec: the first stages, on the eval split.")
@click.option("--dev-runs", "dev_dirs", type=RUNS, multiple=True, required=True,
              help="Folders of the same systems' runs where the depth and weight are chosen (dev splits, the "
                   "zero-shot dev).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Writes OUT/runs/<data>/<split>/<system>>rerank.trec, OUT/rerank.json and OUT/rerank.md.")
@friendly_errors
def command(params_file, reranker_dir, stores, runs_dirs, dev_dirs, out) -> None:
    """Rerank each eval set's first-stage runs from the stores; depth and weight chosen on dev."""
    check_writable(out)
    params = load_params(params_file)
    if not (params.get("reranker") or {}).get("designs", ["configured"]):
        atomic_dir(out, lambda tmp: ((tmp / "runs").mkdir(), (tmp / "rerank.json").write_text(json.dumps({}))))
        click.echo("reranker.designs is empty: nothing to rerank")
        return
    from pipeline.interaction.rerank_report import write_rerank_report
    from pipeline.interaction.rerank_runs import rerank_configuration

    report = rerank_configuration(params, reranker_dir, stores, list(runs_dirs), list(dev_dirs), out)
    (Path(out) / "runs").mkdir(parents=True, exist_ok=True)  # `lmort evaluate --runs` reads it, reranked or not
    click.echo(write_rerank_report(report, out))


@click.command("rerank-run")
@click.option("--reranker", "reranker_dir", type=click.Path(path_type=Path, exists=True), required=True,
              help="`lmort train-reranker`'s folder.")
@click.option("--stores", type=click.Path(path_type=Path), required=True,
              help="Folder of <set>/{queries,corpus}.zarr (`lmort extract` of the set, with the reranker's model).")
@click.option("--data", required=True, help="The set the run is of (a name or a prepared folder).")
@click.option("--run", "run_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="A TREC run (qid Q0 docid rank score tag) of that set: BM25's, a fusion's, any system's.")
@click.option("--depth", type=int, default=100, show_default=True, help="Candidates reranked per query.")
@click.option("--weight", type=float, default=1.0, show_default=True,
              help="The reranker's share in a min-max interpolation with the run's scores (1: its score alone).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The reranked TREC run.")
@friendly_errors
def run_command(reranker_dir, stores, data, run_path, depth, weight, out) -> None:
    """Rerank one TREC run of any prepared set from its stores (no retraining)."""
    check_writable(out)
    from pipeline.interaction.rerank_runs import rerank_one_run

    run = rerank_one_run(reranker_dir, stores, data, run_path, depth, weight, out)
    click.echo(f"reranked the top {depth} of {len(run)} queries into {out}")
