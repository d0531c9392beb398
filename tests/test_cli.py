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
    modules = imported_after("import pipeline.common.command_line")
    assert "torch" not in modules
    from pipeline.common.command_line import friendly_errors
    from pipeline.common.errors import ConfigError, DataError, OutputError, StoreError

    for error in (DataError, ConfigError, StoreError, OutputError, FileNotFoundError):
        def failing(error=error):
            raise error("x.jsonl:3: field 'text' must be a string")
        try:
            friendly_errors(failing)()
        except click.ClickException as e:
            assert e.message == "x.jsonl:3: field 'text' must be a string"
        else:
            raise AssertionError(f"{error.__name__} passed through")


# Which sections of the configuration each command's options take their defaults from ("" = the top level), and
# the options named otherwise than their knob. Commands left out read no configured knob (compare, compose, tiny,
# fetch-squad) or take them all from --params (fuse, rag, report's sections).
SECTIONS = {"prepare": ["prepare"], "analyze": ["analyze", "extract", ""], "extract": ["extract", ""],
            "train": ["", "train", "tuner"], "index": ["train"], "search": ["train"], "baselines": [""],
            "ask": ["rag"], "scale": ["scaling"], "sweep": ["sweep"], "train-reader": ["reader"],
            "adapter": ["adapter"], "report": [""], "evaluate": [""]}
KNOB_OF = {("baselines", "systems"): "baselines", ("baselines", "split"): "eval_split",
           ("index", "split"): "eval_split", ("evaluate", "split"): "eval_split"}


def test_every_option_default_is_the_default_configuration():
    """One source of every default: where an option sets a knob of the configuration, its default is the default
    configuration's value (params.yaml), so a command run by hand does what `make repro` does."""
    from pathlib import Path

    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    checked, wrong = 0, []
    for name, sections in SECTIONS.items():
        for option in main.get_command(None, name).params:
            unset = option.default is None or type(option.default).__name__ == "Sentinel"  # click's "no default"
            if option.required or unset or option.name in ("params_file", "overrides", "out"):
                continue
            knob = KNOB_OF.get((name, option.name), option.name)
            for sec in sections:
                table = params if sec == "" else params.get(sec) or {}
                if knob in table and not isinstance(table[knob], dict):
                    checked += 1
                    value = option.type_cast_value(None, table[knob]) if table[knob] is not None else None
                    if option.default != value:
                        wrong.append(f"lmort {name} --{option.name}: {option.default!r}, configured {value!r}")
                    break
    assert not wrong, "\n".join(wrong)
    assert checked >= 20, checked  # the walk reached the options it is meant to check


def test_every_typed_section_holds_the_default_configuration():
    from pathlib import Path

    import yaml

    from pipeline.common.config import RUN, SECTIONS, run_config, section

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert run_config(params) == RUN
    for name, cls in SECTIONS.items():
        assert section(params, name) == cls(), name


def test_a_misspelt_knob_of_a_typed_section_is_named():
    import pytest

    from pipeline.common.config import section
    from pipeline.common.errors import ConfigError

    with pytest.raises(ConfigError, match="max_pp"):
        section({"fusion": {"max_pp": 0.1}}, "fusion")
