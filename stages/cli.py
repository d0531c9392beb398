"""The `lmort` command: one sub-command per pipeline stage, each a thin shell over pipeline/.

Sub-commands are imported when called, not all at start: every DVC stage is one `lmort` process, and importing
all twenty (transformers, peft, faiss, matplotlib, bm25s) cost each of them about a second it did not need.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging

import click

COMMANDS = {  # name: "module:attribute" of its click command
    "prepare": "stages.prepare:command", "analyze": "stages.analyze:command", "extract": "stages.extract:command",
    "train": "stages.train:command", "index": "stages.index:index_command", "search": "stages.search:command",
    "ask": "stages.ask:command", "baselines": "stages.baselines:command",
    "evaluate": "stages.evaluate:evaluate_command", "fuse": "stages.fuse:command", "rag": "stages.rag:command",
    "fetch-squad": "stages.squad:command", "report": "stages.report:command", "scale": "stages.scale:command",
    "sweep": "stages.sweep:command", "identify": "stages.identify:command", "compose": "stages.compose:command",
    "adapter": "stages.adapter:command", "compare": "stages.compare:command", "tiny": "stages.tiny:command",
    "train-reader": "stages.train_reader:command", "train-reranker": "stages.train_reranker:command",
    "rerank": "stages.rerank:command", "rerank-run": "stages.rerank:run_command", "serve": "stages.serve:command",
}


class LazyGroup(click.Group):
    """A click group that imports a sub-command's module only when that sub-command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """`lmort --help` lists each command's first docstring line read from its file, not by importing it (the
        imports would cost `--help` about two seconds)."""
        rows = [(name, click.Command(name, help=short_help(name)).get_short_help_str(formatter.width - 6 - len(name)))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def short_help(name: str) -> str:
    """The docstring of a command's function, from its module's source."""
    module, attribute = COMMANDS[name].split(":")
    tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == attribute)
    return ast.get_docstring(function) or ""


@click.group(cls=LazyGroup)
def main() -> None:
    """LMORT: dense retrieval from a frozen LLM's cached hidden states."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library logs; the command line shows it
    logging.getLogger("faiss").setLevel(logging.WARNING)  # not faiss' loader's six lines of which CPU kernels load
