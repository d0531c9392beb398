"""`lmort ask`'s cost per question: the prompt's one forward, retrieval (the tuner on the prompt's own states,
FAISS, and BM25 plus the fusion for a hybrid), generation; beside a separate MiniLM encoding of the same question
and a separate encoding through the truncated LLM (what `lmort search` pays). The goal: retrieval at most
5% of the time to answer one question on 2 cores.

    python bench/ask_bench.py --index cache/rag/index/lmort/squad [--questions 20] [--retriever lmort+bm25]

Prints a Markdown table (medians over the questions, milliseconds) and writes it to bench/ask_bench.md.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click


@click.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--questions", default=20, show_default=True, help="Test questions, the first of the split.")
@click.option("--split", default="test", show_default=True)
@click.option("--k", default=3, show_default=True)
@click.option("--retriever", help="[<system>+bm25]")
@click.option("--order", default="question-first", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/ask_bench.md"), show_default=True)
def main(index_dir, questions, split, k, retriever, order, out) -> None:
    from pipeline.activations.llm import FrozenLLM
    from pipeline.answers.ask import Memory
    from pipeline.answers.service import warm_up
    from pipeline.common.tables import markdown_table
    from pipeline.retrieval.baselines import minilm_encode

    memory = Memory(index_dir, reader="generate")  # the prepared set and configuration its meta.json names
    ds = memory.ds
    warm_up(memory)  # BM25's index and the fusion built once, before timing (as `lmort serve` does)
    llm = FrozenLLM(memory.meta["model"], max_layer=max(memory.tuner.cfg.layers), dtype=memory.reader.model.dtype)
    qids = sorted(ds.qrels[split])[: questions + 1]
    memory.ask(ds.queries[qids[0]], k, retriever, order)  # warm-up: kernels compiled, caches filled
    minilm_encode(["warm up"], progress=False)
    rows = []
    for q in qids[1:]:
        text = ds.queries[q]
        a = memory.ask(text, k, retriever, order)
        t0 = time.perf_counter()
        minilm_encode([text], progress=False)
        t1 = time.perf_counter()
        memory.tuner.encode_texts(llm, [text], memory.template, memory.query_max_length)
        t2 = time.perf_counter()
        rows.append({**a.ms, "minilm": (t1 - t0) * 1e3, "separate": (t2 - t1) * 1e3})
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    table = markdown_table([{
        "retriever": memory.ask(ds.queries[qids[1]], k, retriever, order).retriever, "order": order, "k": k,
        "questions": len(rows), "prompt forward ms": med["forward"], "retrieve ms": med["retrieve"],
        "generate ms": med["generate"], "answer ms": med["total"],
        "retrieve share": f"{med['retrieve'] / med['total']:.1%}",
        "MiniLM question encoding ms": med["minilm"], "separate LLM+tuner encoding ms": med["separate"]}],
        ["retriever", "order", "k", "questions", "prompt forward ms", "retrieve ms", "generate ms", "answer ms",
         "retrieve share", "MiniLM question encoding ms", "separate LLM+tuner encoding ms"], floatfmt=".1f")
    text = (f"`python bench/ask_bench.py --index {index_dir} --questions {questions}` "
            f"(medians; {ds.name} {split}):\n\n{table}")
    out.write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
