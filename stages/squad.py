"""`lmort fetch-squad`: SQuAD v1.1 in BEIR layout, with answers.jsonl, from the official JSON files."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.common.atomic import check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.paths import cache_root
from pipeline.data.squad import SQUAD_URL, fetch_squad


@click.command("fetch-squad")
@click.option("--out", type=click.Path(path_type=Path), help="The BEIR folder to write [cache/beir/squad, where "
              "`lmort prepare --data squad` finds it].")
@click.option("--train-json", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The official train-v1.1.json [downloaded].")
@click.option("--dev-json", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The official dev-v1.1.json [downloaded].")
@click.option("--url", default=SQUAD_URL, show_default=True, help="Where the official files are downloaded from.")
@friendly_errors
def command(out, train_json, dev_json, url) -> None:
    """Build squad (corpus, queries, qrels train/test, answers) with the ids of ../shared's copy."""
    out = out or cache_root() / "beir" / "squad"
    check_writable(out)
    fetch_squad(out, train_json, dev_json, url)
    click.echo(f"wrote {out}")
