"""`lmort index` (encode from the stores, FAISS, TREC run) and `lmort search` (new text, online)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.atomic import check_writable
from pipeline.command_line import friendly_errors
from pipeline.index import load_index, search
from pipeline.prepare import ensure_prepared
from pipeline.store import open_stores


@click.command("index")
@click.option("--tuner", "tuner_dir", type=click.Path(path_type=Path, exists=True), required=True,
              help="A trained tuner folder (the `best/` of `lmort train`).")
@click.option("--stores", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--data", required=True)
@click.option("--split", default="test", show_default=True, help="Queries to run (their qrels split).")
@click.option("--kind", type=click.Choice(["flat", "hnsw", "ivf"]), default="flat", show_default=True)
@click.option("--system", required=True, help="Name of this system in run files and tables.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for vectors and index.")
@click.option("--run", "run_path", type=click.Path(path_type=Path), required=True, help="TREC run file to write.")
@click.option("--bf16", type=bool, default=True, show_default=True,
              help="Encode under bf16 autocast where the device has native bfloat16.")
@friendly_errors
def index_command(tuner_dir, stores, data, split, kind, system, out, run_path, bf16) -> None:
    """Encode a corpus from its store with a trained tuner; FAISS index and a TREC run of the split."""
    check_writable(out)
    check_writable(run_path)
    from pipeline.index import index_dataset

    ds = ensure_prepared(data)
    queries, corpus = open_stores(stores, ds.name)
    meta = index_dataset(tuner_dir, queries, corpus, list(ds.qrels[split]), out, run_path, system, kind,
                         bf16=bf16)
    click.echo(f"{system} on {ds.name}: {meta['texts']} vectors of {meta['dim']} dims in {meta['encode_seconds']} s; "
               f"wrote {out} and {run_path}")


@click.command("search")
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("-k", default=10, show_default=True)
@click.option("--data", help="Data set to show titles from.")
@click.option("--bf16", type=bool, default=True, show_default=True,
              help="Run the tuner under bf16 autocast where the device has native bf16 (the LLM computes in the "
                   "dtype its stores were built with).")
@click.argument("text", nargs=-1, required=True)
@friendly_errors
def search_command(index_dir, k, data, text, bf16) -> None:
    """Encode TEXT with the frozen LLM + tuner (no store) and search the index."""
    from pipeline.llm import FrozenLLM, Template, default_device
    from pipeline.precision import resolve_compute_dtype
    from pipeline.tuner import Tuner

    index, meta = load_index(index_dir)
    tuner = Tuner.load(Path(meta["tuner"]))
    llm = FrozenLLM(meta["model"], max_layer=max(tuner.cfg.layers),
                    dtype=resolve_compute_dtype(meta.get("compute_dtype", "float32"), default_device()))
    vec = tuner.encode_texts(llm, [" ".join(text)], Template(**meta["template"]), meta["query_max_length"],
                        bf16=bf16)
    scores, idx = search(index, vec, k)
    ds = ensure_prepared(data) if data else None
    for rank, (s, j) in enumerate(zip(scores[0], idx[0]), 1):
        did = meta["ids"][j]
        title = ""
        if ds is not None:
            doc = ds.corpus[did]
            title = (doc["title"] or doc["text"])[:90]
        click.echo(f"{rank:>3}  {s:8.4f}  {did}  {title}")


