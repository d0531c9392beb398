"""`lmort identify`: record what a training run reads (the training sets' prepared tables and, with --stores,
their stores' fingerprints and build histories), so that dvc.yaml's analyze and train stages depend on the
training sets only: adding an evaluation-only set rewrites this record unchanged, and DVC keeps every tuner."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.tuner.training_sets import training_identity


@click.command("identify")
@click.option("--data", "data", multiple=True, required=True, help="The training sets (names or folders).")
@click.option("--stores", type=click.Path(path_type=Path, exists=True),
              help="Also record these sets' stores (folder of <set>/{queries,corpus}.zarr).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSON file to write.")
@friendly_errors
def command(data, stores, out) -> None:
    """Write the identity of each training set's prepared tables (and stores) to --out."""
    check_writable(out)
    identity = training_identity(names(data), stores)
    atomic_file(out, lambda tmp: tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n"))
    click.echo(f"{len(identity)} training set(s); wrote {out}")
