"""`lmort compose`: write the params file of a protocol (conf/protocol/<name>.yaml over conf/config.yaml), as
`dvc exp run -S protocol=<name>` composes it, for commands run outside DVC (benchmarks, a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.command_line import friendly_errors
from pipeline.params import CONF_DIR, compose_params


@click.command("compose")
@click.option("--protocol", default="default", show_default=True,
              type=click.Choice(sorted(p.stem for p in (CONF_DIR / "protocol").glob("*.yaml"))),
              help="A protocol of conf/protocol/.")
@click.option("--set", "overrides", multiple=True, help="A Hydra override, e.g. --set tuner.blocks=3.")
@click.option("--out", type=click.Path(path_type=Path), default="params.yaml", show_default=True)
@friendly_errors
def command(protocol: str, overrides: tuple[str, ...], out: Path) -> None:
    """Compose the parameters of one protocol (Hydra, as DVC runs it)."""
    params = compose_params(out, protocol, overrides)
    click.echo(f"wrote {out}: configuration {params['name']!r} (protocol {protocol})")
