"""`lmort tiny`: the tiny random model and tiny data set of the quick configuration (no downloads)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.data.tiny import make_tiny_model, write_beir


@click.command("tiny")
@click.option("--out", type=click.Path(path_type=Path), default="cache/tiny", show_default=True)
def command(out: Path) -> None:
    """Write OUT/model (a random 3-layer Llama) and OUT/beir/tiny (a BEIR set); point LMORT_DATA at OUT/beir."""
    make_tiny_model(out / "model")
    write_beir(out / "beir" / "tiny", n_docs=60, n_queries=48)
    click.echo(f"wrote {out}/model and {out}/beir/tiny; use: LMORT_DATA={out}/beir, model: {out}/model")
