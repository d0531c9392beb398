"""The `lmort` command: one sub-command per pipeline stage, each a thin shell over pipeline/."""

from __future__ import annotations

import click

from . import analyze, extract, prepare


@click.group()
def main() -> None:
    """LMORT: dense retrieval from a frozen LLM's cached hidden states."""


for module in (prepare, analyze, extract):
    main.add_command(module.command)
