"""The `lmort` command: one sub-command per pipeline stage, each a thin shell over pipeline/."""

from __future__ import annotations

import logging

import click

from . import (
    adapter,
    analyze,
    ask,
    baselines,
    compare,
    compose,
    evaluate,
    extract,
    fuse,
    identify,
    index,
    prepare,
    rag,
    report,
    scale,
    search,
    squad,
    sweep,
    tiny,
    train,
)


@click.group()
def main() -> None:
    """LMORT: dense retrieval from a frozen LLM's cached hidden states."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library logs; the command line shows it
    logging.getLogger("faiss").setLevel(logging.WARNING)  # not faiss' loader's six lines of which CPU kernels load


for command in (prepare.command, analyze.command, extract.command, train.command, index.index_command,
                search.command, ask.command, baselines.command, evaluate.evaluate_command, fuse.command, rag.command,
                squad.command, report.command, scale.command, sweep.command, identify.command, compose.command,
                adapter.command, compare.command, tiny.command):
    main.add_command(command)
