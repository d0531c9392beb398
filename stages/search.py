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
    import time

    from pipeline.answers.ask import RerankStep, open_prepared
    from pipeline.common.quiet import quiet_libraries
    from pipeline.tuner.encoders import index_piece, open_index

    query = " ".join(text)
    if not query.strip():
        raise click.UsageError("the query is empty")
    quiet_libraries()
    retriever, meta = open_index(index_dir, bf16)
    ds = ensure_prepared(data) if data else open_prepared(index_dir, meta)
    root, stores = (index_piece(index_dir, meta, piece) for piece in ("configuration", "stores"))
    step = RerankStep.open(root, stores, ds, rerank) if ds is not None else RerankStep()
    system = meta["system"]
    if not step.active(system):
        click.echo(format_hits(ranked_hits(retriever.search({"q": query}, k)["q"], ds, k)))
        return
    found = retriever.search({"q": query}, step.depth(system, k))["q"]
    t0 = time.perf_counter()
    encoder = retriever.encode
    llm = encoder.llm  # the LLM cut after the tuner's deepest layer; the reranker may read a deeper one
    if max(step.layers) > max(encoder.tuner.cfg.layers):
        from pipeline.activations.llm import FrozenLLM

        llm = FrozenLLM(encoder.model, max_layer=max(step.layers), dtype=llm.model.dtype)
    ids, _ = llm.tokenize([encoder.template.format_query(query)], encoder.max_length)
    states, mask = llm.forward(ids, step.layers)
    states = {layer: x[:, : int(mask.sum())] for layer, x in states.items()}
    found = step.rerank(system, states, found, bf16)
    click.echo(format_hits(ranked_hits(found, ds, k)))
    click.echo(f"reranked ({system}>rerank) in {(time.perf_counter() - t0) * 1e3:.0f} ms")
