"""`lmort prepare`: validate a BEIR set, mine BM25 hard negatives, write Parquet tables."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.tables import markdown_table
from pipeline.data.prepare import DEFAULT, prepare_dataset, prepared_dir


@click.command("prepare")
@click.option("--data", required=True, help="BEIR folder, or a name under $LMORT_DATA, ../shared/data/beir, "
              "or the public BEIR archive.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [cache/data/<name>].")
@click.option("--negatives", default=DEFAULT.negatives, show_default=True, help="BM25 hard negatives kept per query.")
@click.option("--dev-fraction", default=DEFAULT.dev_fraction, show_default=True,
              help="Train queries carved into dev where none.")
@click.option("--seed", default=DEFAULT.seed, show_default=True)
@click.option("--md5", help="Expected md5 of a downloaded archive not in the built-in list.")
@friendly_errors
def command(data: str, out: Path | None, negatives: int, dev_fraction: float, seed: int, md5: str | None) -> None:
    """Validate a BEIR set, mine BM25 hard negatives, write Parquet tables and BM25 sanity scores."""
    out = out or prepared_dir(data)
    check_writable(out)
    summary = prepare_dataset(data, out, negatives, dev_fraction, seed, md5)
    for note in summary["warnings"]:
        click.echo(f"warning: {note}", err=True)
    rows = [{"split": s, **m} for s, m in summary["bm25"].items()]
    click.echo(f"{summary['name']}: BM25 (bm25s) sanity scores")
    click.echo(markdown_table(rows, ["split", "nDCG@10", "Recall@100", "MRR@10"]))
    atomic_file(out / "bm25.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    click.echo(f"wrote {out}")
