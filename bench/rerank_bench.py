"""The reranker's cost per query (the goal: the top 100 of one query reranked in at most 100 ms warm on 2
cores, store reads included): one query at a time, its top `depth` BM25 candidates scored from the stores.

Rows: `stores` (the passages' stored states read from the Zarr store, not held in memory, and encoded for this
query: nothing kept between queries), `stores, layers in memory` (the same with the store's layers loaded once,
as a server holds them), `encoded passages kept` (the passages' query-independent encodings computed once: only the
query side and the interaction run), and with `--encoded`, `encodings stored by lmort rerank` (the same, read from
the file `lmort rerank` writes beside its runs, the corpus store's layers not loaded: what `lmort serve` does).
Each row: p50 / p90 / mean milliseconds over the queries, after one warm-up query.

    python bench/rerank_bench.py --reranker cache/default/reranker --stores cache/default/stores --data scifact \
        [--queries 50] [--depth 100] [--encoded cache/default/rerank/encoded/scifact.safetensors]

Prints a Markdown table and writes it to bench/rerank_bench.md.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click


def timed(fn, items) -> list[float]:
    fn(items[0])  # warm-up
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append(1000 * (time.perf_counter() - t0))
    return out


@click.command()
@click.option("--reranker", "reranker_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--stores", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--data", required=True)
@click.option("--split", default="test", show_default=True)
@click.option("--queries", default=50, show_default=True)
@click.option("--depth", default=100, show_default=True)
@click.option("--bf16/--no-bf16", default=True, show_default=True)
@click.option("--encoded", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The passages' encodings `lmort rerank` stored (cache/<name>/rerank/encoded/<set>.safetensors).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/rerank_bench.md"), show_default=True)
def main(reranker_dir, stores, data, split, queries, depth, bf16, encoded, out) -> None:
    import torch

    from pipeline.activations.llm import device_name
    from pipeline.activations.store import open_stores, shared_fingerprint
    from pipeline.common.tables import markdown_table
    from pipeline.data.prepare import ensure_prepared
    from pipeline.interaction.rerank import EncodedPassages, rerank_scores
    from pipeline.interaction.rerank_runs import chosen_reranker
    from pipeline.retrieval.baselines import bm25_run

    ds = ensure_prepared(data)
    q_store, corpus = open_stores(stores, ds.name)
    reranker = chosen_reranker(reranker_dir, shared_fingerprint(q_store.fingerprint))
    qids = sorted(ds.qrels[split])[:queries]
    run = bm25_run(ds, qids, depth)
    one = [{q: run[q]} for q in qids if run.get(q)]

    def fresh(r):  # nothing kept between queries: the passages read from the store and encoded for this one
        return rerank_scores(reranker, q_store, EncodedPassages(reranker, corpus, bf16), r, depth, bf16)

    rows = [("stores (Zarr reads, passages encoded per query)", timed(fresh, one))]
    note = ""
    if encoded is not None:
        stored = EncodedPassages(reranker, corpus, bf16)
        t0 = time.perf_counter()
        if not stored.load_saved(encoded):
            raise click.ClickException(f"{encoded}: made by another reranker or store")
        note = (f"; `--encoded {encoded}`: the stored encodings mapped in {time.perf_counter() - t0:.2f} s (safetensors"
                f" maps the file; its pages are read as the queries touch them)")
        rows.append(("encodings stored by lmort rerank", timed(
            lambda r: rerank_scores(reranker, q_store, stored, r, depth, bf16), one)))
    corpus.load(reranker.cfg.layers)
    q_store.load(reranker.cfg.layers)
    rows.append(("stores, layers in memory", timed(fresh, one)))
    kept = EncodedPassages(reranker, corpus, bf16)
    kept.get(list({d for r in one for docs in r.values() for d in docs}))
    rows.append(("encoded passages kept", timed(lambda r: rerank_scores(reranker, q_store, kept, r, depth, bf16),
                                                one)))
    table = markdown_table([{"what": what, "p50 ms": statistics.median(ms), "p90 ms": sorted(ms)[int(0.9 * len(ms))],
                             "mean ms": statistics.mean(ms)} for what, ms in rows],
                           ["what", "p50 ms", "p90 ms", "mean ms"], floatfmt=".1f")
    header = (f"`python bench/rerank_bench.py --data {data} --queries {queries} --depth {depth}` on {device_name()}, "
              f"{torch.get_num_threads()} threads, design {reranker.cfg.design}, {len(one)} queries, top {depth} of "
              f"BM25, {'bf16 where native' if bf16 else 'float32'}{note}\n\n")
    out.write_text(header + table + "\n")
    click.echo(header + table)


if __name__ == "__main__":
    main()
