"""`lmort identify`: a small record of what later stages read, so that DVC hashes it instead of the data.

- `--data` (the training sets; `train-data` and `train-stores`): their prepared tables and, with --stores, their
  stores' fingerprints and build histories; analyze and train depend on it, so adding an evaluation-only set
  rewrites it unchanged and DVC keeps every tuner.
- `--params` (every set of the configuration; the `stores` stage): every store's identity, which sweep,
  train-stores, scale, train-reader, rag and report depend on instead of the stores folder's ~30,000 chunk files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.params import load_params
from pipeline.tuner.training_sets import training_identity


@click.command("identify")
@click.option("--data", "data", multiple=True, help="The sets (names or folders) [the params' `datasets`].")
@click.option("--stores", type=click.Path(path_type=Path, exists=True),
              help="Also record these sets' stores (folder of <set>/{queries,corpus}.zarr).")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Without --data: every set of this configuration's `datasets`.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSON file to write.")
@friendly_errors
def command(data, stores, params_file, out) -> None:
    """Write the identity of each set's prepared tables (and stores) to --out."""
    check_writable(out)
    sets = names(data)
    if not sets and params_file:
        sets = [str(d) for d in load_params(params_file).get("datasets") or []]
    if not sets:
        raise click.UsageError("give --data, or --params with a `datasets` list")
    identity = training_identity(sets, stores)
    atomic_file(out, lambda tmp: tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n"))
    click.echo(f"{len(identity)} set(s); wrote {out}")
