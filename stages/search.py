"""`lmort search`: new text through the frozen LLM and the tuner (no store), searched in an index."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.common.command_line import friendly_errors
from pipeline.data.prepare import ensure_prepared
from pipeline.retrieval.hits import format_hits, hits_of
from pipeline.retrieval.index import load_index, search


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
    from pipeline.activations.llm import FrozenLLM, default_device
    from pipeline.common.config import Template
    from pipeline.common.precision import resolve_compute_dtype
    from pipeline.tuner.model import Tuner

    query = " ".join(text)
    if not query.strip():
        raise click.UsageError("the query is empty")
    index, meta = load_index(index_dir)
    template = Template(**meta["template"])
    if "adapter" in meta:  # the adapter baseline: the LLM with its adapters, pooled, the head
        from pipeline.tuner.adapter import Adapter

        vec = Adapter.load(Path(meta["adapter"])).encode([template.format_query(query)], meta["query_max_length"],
                                                         bf16, progress=False)
    else:
        tuner = Tuner.load(Path(meta["tuner"]))
        llm = FrozenLLM(meta["model"], max_layer=max(tuner.cfg.layers),
                        dtype=resolve_compute_dtype(meta.get("compute_dtype", "float32"), default_device()))
        vec = tuner.encode_texts(llm, [query], template, meta["query_max_length"], bf16=bf16)
    scores, idx = search(index, vec, k)
    data = data or meta.get("data")
    ds = ensure_prepared(data) if data else None
    click.echo(format_hits(hits_of(meta["ids"], scores[0], idx[0], ds)))
