"""`lmort extract`: stage one. Hidden states of the chosen layers into resumable Zarr stores."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.activations.extract import EXTRACT, ExtractSpec, extract
from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.config import CASES, Template, unescape_newlines
from pipeline.common.precision import COMPUTE_DTYPES
from pipeline.data.prepare import ensure_prepared


def default_layers(geometry: Path, last_layer: bool = EXTRACT.last_layer) -> list[int]:
    """The A- and U-layers of an analysis, the embedding layer, and (if asked) the last layer: the inputs
    of every ablation. Without the last layer only the blocks up to max(A, U) ever run."""
    g = json.loads(Path(geometry).read_text())
    return sorted({0, g["a_layer"], g["u_layer"], *([g["num_layers"]] if last_layer else [])})


@click.command("extract")
@click.option("--model", required=True)
@click.option("--data", required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for corpus.zarr, queries.zarr.")
@click.option("--layers", help="Comma-separated layers to store (with --geometry: besides its layers; a layer sweep "
              "stores many). Without --geometry: only these.")
@click.option("--geometry", type=click.Path(path_type=Path, exists=True), help="geometry.json of `lmort analyze`.")
@click.option("--last-layer", type=bool, default=EXTRACT.last_layer, show_default=True,
              help="With --geometry: also store the last layer (runs every block of the LLM).")
@click.option("--kind", "kinds", multiple=True, default=("corpus", "queries"), show_default=True)
@click.option("--query-max-length", default=EXTRACT.query_max_length, show_default=True)
@click.option("--passage-max-length", default=EXTRACT.passage_max_length, show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=EXTRACT.dtype, show_default=True,
              help="How the states are stored.")
@click.option("--compute-dtype", type=click.Choice(COMPUTE_DTYPES), default=EXTRACT.compute_dtype, show_default=True,
              help="How the LLM computes them; auto = bfloat16 where the CPU/GPU has native bf16, else float32.")
@click.option("--case", type=click.Choice(CASES), default=EXTRACT.case, show_default=True,
              help="lower: lower-case every text before tokenising (recorded in the fingerprint; online search "
                   "applies it too).")
@click.option("--query-template", default=EXTRACT.query_template, show_default=True,
              callback=lambda _ctx, _param, value: unescape_newlines(value),
              help="How a query is written before tokenising ({text}: the query; \\n: a newline, since DVC runs "
                   "each line of a command apart). `lmort ask` needs the prompt's prefix here, e.g. "
                   "'<|im_start|>user\\n{text}' for a chat model (in the fingerprint).")
@click.option("--shard-tokens", default=ExtractSpec.shard_tokens, show_default=True)
@click.option("--chunk-tokens", default=EXTRACT.chunk_tokens, show_default=True,
              help="Rows per Zarr chunk of a layer (smaller: streamed training decodes less; more files).")
@click.option("--workers", default=0, help="Start a dask LocalCluster with N worker processes.")
@click.option("--scheduler", help="Address of an existing dask.distributed scheduler.")
@click.option("--force", is_flag=True, help="Rebuild the store from scratch.")
@click.option("--rebuild-on-mismatch", is_flag=True,
              help="Rebuild a store whose fingerprint differs instead of refusing (dvc.yaml uses it).")
@click.option("--dry-run", is_flag=True, help="Print the cost and stop.")
@friendly_errors
def command(model, data, out, layers, geometry, last_layer, kinds, query_max_length, passage_max_length, dtype,
            compute_dtype, case, query_template,
            shard_tokens, chunk_tokens, workers, scheduler, force, rebuild_on_mismatch, dry_run) -> None:
    """Run the frozen LLM once over a data set's corpus and queries; store the chosen layers."""
    if not dry_run:
        check_writable(out)
    extra = {int(x) for x in (layers or "").split(",") if x.strip()}
    if not extra and not geometry:
        raise click.UsageError("give --layers or --geometry (the output of `lmort analyze`)")
    chosen = sorted(extra | set(default_layers(geometry, last_layer) if geometry else []))
    ds = ensure_prepared(data)
    summaries = {}
    for kind in kinds:
        spec = ExtractSpec(model, tuple(chosen), kind, query_max_length if kind == "queries" else passage_max_length,
                           template=Template(query=query_template, case=case), dtype=dtype, compute_dtype=compute_dtype,
                           shard_tokens=shard_tokens,
                           chunk_tokens=chunk_tokens)
        summaries[kind] = extract(ds, spec, out / f"{kind}.zarr", force=force, workers=workers, scheduler=scheduler,
                                  dry_run=dry_run, rebuild_on_mismatch=rebuild_on_mismatch)
    if not dry_run:
        atomic_file(out / "extract.json", lambda tmp: tmp.write_text(json.dumps(summaries, indent=1)))
        for kind, s in summaries.items():
            click.echo(f"{kind}: {s['texts']} texts, {s['tokens']:,} tokens, {s['seconds']} s, "
                       f"{s['tokens_per_second']} tok/s, {s['bytes_on_disk'] / 1e6:.1f} MB on disk")


