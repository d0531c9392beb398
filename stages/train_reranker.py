"""`lmort train-reranker`: the reranker, trained from the stores alone; the LLM is never loaded."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_dir, check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.params import load_params


@click.command("train-reranker")
@click.option("--stores", type=click.Path(path_type=Path), required=True,
              help="Folder of <data set>/{queries,corpus}.zarr written by `lmort extract`.")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default="params.yaml", show_default=True, help="YAML with a `reranker:` section.")
@click.option("--set", "overrides", multiple=True, help="Override a parameter, e.g. --set reranker.epochs=2.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="OUT/<design>/: best/ (safetensors + reranker.json), train.json, curve.md, training.png; "
                   "OUT/chosen.json: the design dev keeps.")
@friendly_errors
def command(stores, params_file, overrides, out) -> None:
    """Train a reranker of each configured design from the stores; dev keeps one."""
    check_writable(out)
    params = load_params(params_file, overrides)
    if not (params.get("reranker") or {}).get("designs", ["configured"]):
        atomic_dir(out, lambda tmp: (tmp / "chosen.json").write_text(json.dumps({})))
        click.echo("reranker.designs is empty: no reranker to train")
        return
    from pipeline.interaction.rerank_train import train_designs

    record = train_designs(stores, params, out)
    for design, r in record["designs"].items():
        best = r["best"]
        click.echo(f"{design}: {r['parameters']:,} parameters, {r['train_seconds']} s; best dev "
                   f"{json.dumps({k: round(v, 4) for k, v in best['dev'].items()})} after {best['queries_seen']:,} "
                   "queries")
    click.echo(f"dev keeps {record['design']} (mean dev nDCG@10 over {', '.join(record['selects_on'])})")
