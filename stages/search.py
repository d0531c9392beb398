"""`lmort search`: new text through the frozen LLM and the tuner (no store), searched in an index."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.common.command_line import friendly_errors
from pipeline.data.prepare import ensure_prepared
from pipeline.retrieval.hits import format_hits, ranked_hits


@click.command("search")
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits to show.")
@click.option("--data", help="Data set to show titles and texts from [the one the index was built on].")
@click.option("--bf16", type=bool, default=True, show_default=True,
              help="Run the tuner under bf16 autocast where the device has native bf16 (the LLM computes in the "
                   "dtype its stores were built with).")
@click.argument("text", nargs=-1, required=True)
@friendly_errors
def command(index_dir, k, data, text, bf16) -> None:
    """Encode TEXT with the frozen LLM + tuner (no store) and search the index: rank, score, id, title, text."""
    from pipeline.tuner.encoders import open_index

    query = " ".join(text)
    if not query.strip():
        raise click.UsageError("the query is empty")
    retriever, meta = open_index(index_dir, bf16)
    found = retriever.search({"q": query}, k)["q"]
    data = data or meta.get("data")
    click.echo(format_hits(ranked_hits(found, ensure_prepared(data) if data else None, k)))
