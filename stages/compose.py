"""`lmort compose`: write the params file of a protocol (configs/protocol/<name>.yaml over configs/config.yaml), as
`dvc exp run -S protocol=<name>` composes it, for commands run outside DVC (benchmarks, a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from pipeline.common.atomic import atomic_file
from pipeline.common.command_line import friendly_errors
from pipeline.common.params import CONF_DIR, compose_params


@click.command("compose")
@click.option("--protocol", default="default", show_default=True,
              type=click.Choice(sorted(p.stem for p in (CONF_DIR / "protocol").glob("*.yaml"))),
              help="A protocol of configs/protocol/.")
@click.option("--set", "overrides", multiple=True, help="A Hydra override, e.g. --set tuner.blocks=3.")
@click.option("--out", type=click.Path(path_type=Path), default="params.yaml", show_default=True)
@friendly_errors
def command(protocol: str, overrides: tuple[str, ...], out: Path) -> None:
    """Compose the parameters of one protocol (Hydra, as DVC runs it)."""
    from hydra.errors import HydraException  # a knob the configuration lacks, a malformed override

    try:
        atomic_file(out, lambda tmp: compose_params(tmp, protocol, overrides))  # a bad override writes nothing
    except HydraException as e:
        raise click.ClickException(f"--set {' '.join(overrides)}: {str(e).splitlines()[0]}") from None
    name = yaml.safe_load(out.read_text())["name"]
    click.echo(f"wrote {out}: configuration {name!r} (protocol {protocol})")
