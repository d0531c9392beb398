"""`lmort analyze`: layer geometry on training pairs; writes geometry.json/.png/.md and picks the layers."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.activations.extract import EXTRACT
from pipeline.common.atomic import check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.config import CASES, Template
from pipeline.common.precision import COMPUTE_DTYPES
from pipeline.data.prepare import ensure_prepared
from pipeline.tuner.analyze import ANALYZE, analyze, layer_table


@click.command("analyze")
@click.option("--model", required=True, help="Preset (smollm2-135m, gemma3-270m), hub id or local folder.")
@click.option("--data", "data", multiple=True, required=True, help="Data set(s) whose training pairs to use.")
@click.option("--split", default="train", show_default=True, help="Pairs split; never test.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--max-pairs", default=ANALYZE.max_pairs, show_default=True)
@click.option("--seed", default=ANALYZE.seed, show_default=True)
@click.option("--query-max-length", default=EXTRACT.query_max_length, show_default=True)
@click.option("--passage-max-length", default=EXTRACT.passage_max_length, show_default=True)
@click.option("--compute-dtype", type=click.Choice(COMPUTE_DTYPES), default=EXTRACT.compute_dtype, show_default=True,
              help="auto = bfloat16 where the CPU/GPU has native bf16, else float32.")
@click.option("--case", type=click.Choice(CASES), default=EXTRACT.case, show_default=True,
              help="lower: lower-case every text first (as `lmort extract --case lower`); keep: as written.")
@click.option("--eval-data", help="Also report each raw layer's nDCG@10 on this set (reporting only).")
@click.option("--eval-split", default="test", show_default=True)
@friendly_errors
def command(model, data, split, out, max_pairs, seed, query_max_length, passage_max_length, compute_dtype,
            case, eval_data, eval_split) -> None:
    """Alignment and uniformity of every layer on training pairs; picks the A- and U-layers."""
    check_writable(out)
    datasets = [ensure_prepared(d) for d in names(data)]
    result = analyze(model, datasets, out, split, max_pairs, seed, query_max_length=query_max_length,
                     passage_max_length=passage_max_length, compute_dtype=compute_dtype,
                     template=Template(case=case),
                     eval_dataset=ensure_prepared(eval_data) if eval_data else None, eval_split=eval_split)
    click.echo(layer_table(result))
    click.echo(result["verdict"])
    click.echo(f"A-layer {result['a_layer']}, U-layer {result['u_layer']}; {result['pairs']} pairs; "
               f"{result['wall_seconds']} s; wrote {out}/geometry.json, .png, .md")
