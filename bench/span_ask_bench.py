"""`lmort ask --reader span`'s cost per question (the goal: a warm question in at most 50 ms on 2 cores,
retrieval included, over at least 50 questions; cold start reported): the question's one forward through the
truncated LLM, retrieval (the tuner on those states, FAISS, BM25 and the fusion for a hybrid), and reading (the span
reader on the question's states and the k passages' states read from the corpus store).

    python bench/span_ask_bench.py --index cache/rag/index/lmort/squad [--questions 50] [--retriever lmort+bm25]

Prints a Markdown table (milliseconds: mean, median, 90th percentile over the questions) and writes it to
bench/span_ask_bench.md. Cold start: a fresh `lmort ask` process answering one question, start to exit.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@click.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--questions", default=50, show_default=True, help="Test questions timed (the first of the split).")
@click.option("--split", default="test", show_default=True)
@click.option("--k", default=None, type=int, help="Passages read [the k the rag stage chose on dev, else 3].")
@click.option("--retriever", help="[<system>+bm25]")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/span_ask_bench.md"), show_default=True)
def main(index_dir, questions, split, k, retriever, out) -> None:
    t_start = time.perf_counter()
    from pipeline.answers.ask import Memory
    from pipeline.answers.service import warm_up
    from pipeline.common.tables import markdown_table

    memory = Memory(index_dir, reader="span")  # the prepared set and configuration its meta.json names
    ds = memory.ds
    rag = memory.root / "rag" / "rag.json" if memory.root else None
    chosen = (json.loads(rag.read_text()).get(ds.name, {}).get("span_choice") or {}) if rag and rag.exists() else {}
    k = k or chosen.get("k", 3)
    warm_up(memory)  # BM25's index and the fusion built once, before timing (as `lmort serve` does)
    qids = sorted(ds.qrels[split])[: questions + 1]
    first = memory.ask(ds.queries[qids[0]], k, retriever)  # warm-up: kernels compiled, caches filled
    in_process_cold = (time.perf_counter() - t_start) * 1e3
    rows = [memory.ask(ds.queries[q], k, retriever).ms for q in qids[1:]]
    t0 = time.perf_counter()
    lmort = str(Path(sys.executable).parent / "lmort")
    subprocess.run([lmort, "ask", "--index", str(index_dir), "--reader", "span", "-k", str(k),
                    *(["--retriever", retriever] if retriever else []), ds.queries[qids[0]]],
                   check=True, capture_output=True)
    process_cold = (time.perf_counter() - t0) * 1e3
    table = markdown_table([{"part": part, "mean ms": statistics.mean(r[part] for r in rows),
                             "median ms": statistics.median(r[part] for r in rows),
                             "p90 ms": percentile([r[part] for r in rows], 0.9)} for part in rows[0]],
                           ["part", "mean ms", "median ms", "p90 ms"], floatfmt=".1f")
    text = (f"`python bench/span_ask_bench.py --index {index_dir} --questions {questions}`: {len(rows)} warm "
            f"{ds.name} {split} questions, one at a time, retriever {first.retriever}, k = {k}, span reader over "
            f"layers {memory.span.layers}:\n\n{table}\n\nCold start: a fresh `lmort ask --reader span` process "
            f"{process_cold / 1e3:.1f} s (start to exit); in this process, imports, loading and the first answer "
            f"{in_process_cold / 1e3:.1f} s.\n")
    out.write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
