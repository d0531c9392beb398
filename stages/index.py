"""`lmort index`: encode a corpus from its store with a trained tuner (or online, with the adapter baseline), a FAISS
index and a TREC run."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.activations.store import open_stores
from pipeline.common.atomic import check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.data.prepare import ensure_prepared


@click.command("index")
@click.option("--tuner", "tuner_dir", type=click.Path(path_type=Path, exists=True), required=True,
              help="A trained tuner folder (the `best/` of `lmort train`), or an adapter's (`lmort adapter`).")
@click.option("--stores", type=click.Path(path_type=Path, exists=True),
              help="The stores a tuner reads (an adapter encodes its texts online and needs none).")
@click.option("--data", required=True)
@click.option("--split", default="test", show_default=True, help="Queries to run (their qrels split).")
@click.option("--kind", type=click.Choice(["flat", "hnsw", "ivf"]), default="flat", show_default=True)
@click.option("--system", required=True, help="Name of this system in run files and tables.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for vectors and index.")
@click.option("--run", "run_path", type=click.Path(path_type=Path), required=True, help="TREC run file to write.")
@click.option("--bf16", type=bool, default=True, show_default=True,
              help="Encode under bf16 autocast where the device has native bfloat16.")
@click.option("--configuration", "configuration", type=click.Path(path_type=Path, file_okay=False),
              help="The configuration's folder (cache/<name>): where `lmort search`, `lmort ask` and `lmort serve` "
                   "find the fusion dev chose, the span reader and the reranker (recorded relative to the index).")
@friendly_errors
def index_command(tuner_dir, stores, data, split, kind, system, out, run_path, bf16, configuration) -> None:
    """Encode a corpus from its store with a trained tuner; FAISS index and a TREC run of the split."""
    check_writable(out)
    check_writable(run_path)
    from pipeline.tuner.indexing import index_dataset

    ds = ensure_prepared(data)
    if (tuner_dir / "adapter.json").exists():
        from pipeline.tuner.adapter_train import index_adapter

        meta = index_adapter(tuner_dir, ds, list(ds.qrels[split]), out, run_path, system, kind, bf16=bf16)
        click.echo(f"{system} on {ds.name}: {meta['texts']} vectors encoded online in {meta['encode_seconds']} s; "
                   f"wrote {out} and {run_path}")
        return
    if stores is None:
        raise click.UsageError("a tuner reads its stores: give --stores")
    queries, corpus = open_stores(stores, ds.name)
    meta = index_dataset(tuner_dir, queries, corpus, list(ds.qrels[split]), out, run_path, system, kind,
                         bf16=bf16, data=ds.name, prepared=ds.folder, configuration=configuration)
    click.echo(f"{system} on {ds.name}: {meta['texts']} vectors of {meta['dim']} dims in {meta['encode_seconds']} s; "
               f"wrote {out} and {run_path}")
