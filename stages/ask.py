"""`lmort ask`: the LLM answers a question from its own memory: one forward gives the query vector and either the
question's states for the span reader (passages' states from the corpus store) or the cache the answer is
generated from."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.answers.reader import ORDERS, PROMPTS
from pipeline.common.command_line import friendly_errors
from pipeline.common.config import RAG
from pipeline.retrieval.hits import format_hits


@click.command("ask")
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="An index of `lmort index` (cache/<name>/index/<variant>/<set>).")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=3, show_default=True, help="Passages read.")
@click.option("--retriever", help="<system>+bm25 (the fusion dev chose, from `lmort fuse`), <system> (the index "
              "alone) or bm25  [<system>+bm25].")
@click.option("--reader", type=click.Choice(["span", "generate"]),
              help="span: the span reader on the passages' stored states; generate: the LLM writes the answer "
                   "[span where the configuration trained one (cache/<name>/reader/<set>), else generate].")
@click.option("--order", type=click.Choice(ORDERS), default="question-first", show_default=True,
              help="generate: question-first reuses the question's cache; passages-first computes it again.")
@click.option("--prompt", type=click.Choice(PROMPTS),
              help="generate: the prompt style [the one dev chose in cache/<name>/rag/rag.json, else plain].")
@click.option("--data", help="The prepared set the index holds [the one its meta.json names].")
@click.option("--model", help="Refuse the index unless it was built with this LLM.")
@click.option("--fusion", "fusion_json", type=click.Path(path_type=Path),
              help="fusion.json of `lmort fuse` [the one in the configuration the index's meta.json names].")
@click.option("--rerank/--no-rerank", default=None,
              help="Rerank the retrieved passages with the configuration's reranker (cache/<name>/reranker) at the "
                   "depth and weight dev chose [as dev chose: on where it kept reranking for the retriever].")
@click.option("--max-new-tokens", default=RAG.max_new_tokens, show_default=True,
              help="generate: the longest answer, in tokens.")
@click.argument("question", nargs=-1, required=True)
@friendly_errors
def command(index_dir, k, retriever, reader, order, prompt, data, model, fusion_json, rerank, max_new_tokens,
            question) -> None:
    """Answer QUESTION: retrieve with the question's own hidden states, then read the passages."""
    from pipeline.answers.ask import Memory
    from pipeline.common.errors import DataError
    from pipeline.data.prepare import ensure_prepared

    text = " ".join(question)
    if not text.strip():
        raise DataError("the question is empty")
    if max_new_tokens < 1:
        raise click.BadParameter(f"{max_new_tokens}: at least 1", param_hint="--max-new-tokens")
    memory = Memory(index_dir, ensure_prepared(data) if data else None, model, fusion_json, reader, rerank=rerank)
    if memory.notice:
        click.echo(memory.notice)
    a = memory.ask(text, k, retriever, order, max_new_tokens, prompt=prompt)
    for note in a.notes:
        click.echo(f"note: {note}")
    click.echo(f"answer: {a.answer}\n")
    if a.source is not None:
        p = memory.ds.corpus[a.source.doc_id]
        click.echo(f"from passage {a.source.rank} ({a.source.doc_id}{', ' + p['title'] if p['title'] else ''}), "
                   f"span score {a.source.score:.2f}:\n  {a.source.sentence}\n")
    reranked = ">rerank" if "rerank" in a.ms else ""
    click.echo(f"read ({a.retriever}{reranked}, {a.order}):\n{format_hits(a.passages)}\n")
    click.echo("ms: " + ", ".join(f"{name} {v:.0f}" for name, v in a.ms.items()))
