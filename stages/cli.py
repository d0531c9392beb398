"""The `lmort` command: one sub-command per pipeline stage, each a thin shell over pipeline/."""

from __future__ import annotations

import logging

import click

from . import analyze, compose, evaluate, extract, fingerprint, index, prepare, report, scale, sweep, tiny, train


@click.group()
def main() -> None:
    """LMORT: dense retrieval from a frozen LLM's cached hidden states."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library logs; the command line shows it


for command in (prepare.command, analyze.command, extract.command, train.command, index.index_command,
                index.search_command, evaluate.baselines_command, evaluate.evaluate_command, report.command,
                scale.command, sweep.command, fingerprint.command, compose.command, tiny.command):
    main.add_command(command)
