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
@click.option("--rerank/--no-rerank", default=None,
              help="Rerank the hits with the configuration's reranker (cache/<name>/reranker) from the passages' "
                   "stored states [as dev chose for the index's system; --rerank: dev's depth or the top 100].")
@click.argument("text", nargs=-1, required=True)
@friendly_errors
def command(index_dir, k, data, text, bf16, rerank) -> None:
    """Encode TEXT with the frozen LLM + tuner (no store) and search the index: rank, score, id, title, text."""
    import json

    from pipeline.answers.ask import Memory, open_prepared
    from pipeline.common.quiet import quiet_libraries

    query = " ".join(text)
    if not query.strip():
        raise click.UsageError("the query is empty")
    quiet_libraries()
    meta = json.loads((index_dir / "meta.json").read_text())
    ds = ensure_prepared(data) if data else open_prepared(index_dir, meta)
    if "adapter" in meta:  # the adapter baseline's index: its LLM is not the frozen one, so nothing reranks it
        from pipeline.tuner.encoders import open_index

        if rerank:
            raise click.UsageError("an adapter's index is not reranked (the reranker reads the frozen LLM's states)")
        click.echo(format_hits(ranked_hits(open_index(index_dir, bf16)[0].search({"q": query}, k)["q"], ds, k)))
        return
    memory = Memory(index_dir, ds, reader="generate", rerank=rerank)  # the one path of search, ask and serve
    hits, ms = memory.search(query, min(k, len(memory.meta["ids"])), retriever=meta["system"], bf16=bf16)
    click.echo(format_hits(hits))
    if "rerank" in ms:
        click.echo(f"reranked ({meta['system']}>rerank) in {ms['rerank']:.0f} ms")
