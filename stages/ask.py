"""`lmort ask`: the LLM answers a question from its own memory (one forward: query vector and answer)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.command_line import friendly_errors
from pipeline.hits import format_hits
from pipeline.reader import ORDERS


@click.command("ask")
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="An index of `lmort index` (cache/<name>/index/<variant>/<set>).")
@click.option("-k", "--k", "k", default=3, show_default=True, help="Passages the LLM reads.")
@click.option("--retriever", help="<system>+bm25 (the fusion dev chose, from `lmort fuse`), <system> (the index "
              "alone) or bm25  [<system>+bm25].")
@click.option("--order", type=click.Choice(ORDERS), default="question-first", show_default=True,
              help="question-first: the question's cache carries on into the answer; passages-first: the reader "
                   "sees the passages first and computes the question again.")
@click.option("--data", help="The prepared set the index holds [the one its meta.json names].")
@click.option("--model", help="Refuse the index unless it was built with this LLM.")
@click.option("--fusion", "fusion_json", type=click.Path(path_type=Path),
              help="fusion.json of `lmort fuse` [cache/<name>/fusion/fusion.json beside the index].")
@click.option("--max-new-tokens", default=24, show_default=True)
@click.argument("question", nargs=-1, required=True)
@friendly_errors
def command(index_dir, k, retriever, order, data, model, fusion_json, max_new_tokens, question) -> None:
    """Answer QUESTION: retrieve from the index with the prompt's own hidden states, then read and answer."""
    import json

    from pipeline.ask import Memory
    from pipeline.data import DataError
    from pipeline.prepare import ensure_prepared

    text = " ".join(question)
    if not text.strip():
        raise DataError("the question is empty")
    data = data or json.loads((index_dir / "meta.json").read_text()).get("data")
    if not data:
        raise DataError(f"{index_dir}/meta.json names no data set: pass --data")
    memory = Memory(index_dir, ensure_prepared(data), model, fusion_json)
    a = memory.ask(text, k, retriever, order, max_new_tokens)
    click.echo(f"answer: {a.answer}\n")
    click.echo(f"read ({a.retriever}, {a.order}):\n{format_hits(a.passages)}\n")
    click.echo("ms: " + ", ".join(f"{name} {v:.0f}" for name, v in a.ms.items()))
