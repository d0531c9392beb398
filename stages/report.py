"""`lmort report`: REPORT.md (and its figures) from one configuration's artifacts."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.common.atomic import check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.params import load_params
from pipeline.common.paths import cache_root
from pipeline.evaluation.report import build_report


@click.command("report")
@click.option("--name", default="default", show_default=True, help="Configuration name (artifacts in cache/<name>).")
@click.option("--params", "params_file", type=click.Path(path_type=Path), default="params.yaml", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="REPORT.md", show_default=True)
@friendly_errors
def command(name, params_file, out) -> None:
    """Write REPORT.md: layer geometry, ablations and baselines, training curves, efficiency."""
    check_writable(out)
    params = load_params(params_file) if Path(params_file).exists() else None
    root = cache_root() / name
    if not root.exists():
        raise click.ClickException(f"{root}: no artifacts for configuration '{name}'; run `dvc repro` first")
    build_report(root, out, Path(out).parent / "report", params)
    click.echo(f"wrote {out}")
