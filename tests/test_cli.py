"""The `lmort` group: `--help` lists every command without importing any of them, and a stage with nothing to do
imports no torch (each DVC stage is one process: those imports were most of a no-op stage's time)."""

import subprocess
import sys

import click
from click.testing import CliRunner

from stages.cli import COMMANDS, main, short_help


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (which prints nothing)."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_help_lists_every_command_with_its_own_summary():
    result = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        command = main.get_command(None, name)
        from_source = click.Command(name, help=short_help(name)).get_short_help_str(300)
        assert from_source == command.get_short_help_str(300), name  # read from the source: what click shows
        line = next(x for x in result.output.splitlines() if x.split()[:1] == [name])
        assert command.get_short_help_str(200 - 6 - len(name)) in line, name


def test_help_imports_no_stage():
    modules = imported_after("from click.testing import CliRunner\nfrom stages.cli import main\n"
                             "CliRunner().invoke(main, ['--help'])")
    assert not {m for m in modules if m.startswith("stages.") and m != "stages.cli"}
    assert "torch" not in modules and "transformers" not in modules


def test_every_library_error_is_one_line_without_torch():
    modules = imported_after("import pipeline.command_line")
    assert "torch" not in modules
    from pipeline.command_line import friendly_errors
    from pipeline.errors import ConfigError, DataError, OutputError, StoreError

    for error in (DataError, ConfigError, StoreError, OutputError, FileNotFoundError):
        def failing(error=error):
            raise error("x.jsonl:3: field 'text' must be a string")
        try:
            friendly_errors(failing)()
        except click.ClickException as e:
            assert e.message == "x.jsonl:3: field 'text' must be a string"
        else:
            raise AssertionError(f"{error.__name__} passed through")
