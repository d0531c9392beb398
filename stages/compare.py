"""`lmort compare`: one table across configurations that ran the same recipe (the LLM's size), with the
adapter baseline beside them; it reads each configuration's cache and runs nothing."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors, names


@click.command("compare")
@click.option("--config", "configs", multiple=True, required=True,
              help="NAME=FOLDER: a configuration's artifacts (cache/<name>), e.g. default=cache/default.")
@click.option("--sets", required=True, help="The evaluation sets, comma-separated (each configuration's eval_sets).")
@click.option("--systems", default="lmort,a-only,pooled-linear,lmort+bm25,pooled-linear+bm25,bm25,minilm-l6,"
              "minilm-l6+bm25", show_default=True, help="The rows each configuration contributes, where it has them.")
@click.option("--trained", "trained", multiple=True,
              help="NAME=FOLDER: a model trained outside the configurations (`lmort adapter --out`, or `lmort train "
                   "--out`), its runs RUNS/<set>/test/NAME.trec under --trained-runs.")
@click.option("--trained-runs", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The Markdown table to write.")
@friendly_errors
def command(configs, sets, systems, trained, trained_runs, out) -> None:
    """One Markdown table: each configuration's systems (nDCG@10 per set, train seconds, s/step, extraction
    tokens/s, store size), and a row per --trained model (the adapter baseline)."""
    from pipeline.evaluation.compare import compare_table, configuration_rows, trained_row

    check_writable(out)
    sets_, rows = names((sets,)), []
    for item in configs:
        name, _, folder = item.partition("=")
        if not folder or not Path(folder).is_dir():
            raise click.BadParameter(f"{item!r}: give NAME=FOLDER with an existing folder", param_hint="--config")
        rows += configuration_rows(name, Path(folder), names((systems,)), sets_)
    for item in trained:
        name, _, folder = item.partition("=")
        if not folder or not Path(folder).is_dir() or trained_runs is None:
            raise click.BadParameter(f"{item!r}: give NAME=FOLDER with an existing folder, and --trained-runs",
                                     param_hint="--trained")
        rows.append(trained_row(name, Path(folder), trained_runs, sets_))
    table = compare_table(rows, sets_)
    atomic_file(out, lambda tmp: tmp.write_text(table))
    click.echo(table)
