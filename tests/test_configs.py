"""Configurations are composed, not copied: params.yaml is what `dvc exp run` composes for the default protocol,
and every protocol in configs/protocol/ composes into a configuration the stages accept."""

from pathlib import Path

import pytest

from pipeline.common.config import SIZES, TunerConfig
from pipeline.common.params import CONF_DIR, compose_params, train_config

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = sorted(p.stem for p in (CONF_DIR / "protocol").glob("*.yaml"))


def test_params_yaml_is_the_default_composition(tmp_path):
    """params.yaml (what `dvc repro` reads) is byte for byte what `dvc exp run` writes for protocol=default."""
    compose_params(tmp_path / "p.yaml")
    assert (tmp_path / "p.yaml").read_text() == (ROOT / "params.yaml").read_text()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_composes_into_valid_knobs(tmp_path, protocol):
    params = compose_params(tmp_path / "p.yaml", protocol)
    assert params["report_dir"] == f"reports/{params['name']}"
    train_config(params)  # unknown train knobs raise
    tuner = dict(params["tuner"])
    size = tuner.pop("size")
    assert size is None or size in SIZES
    TunerConfig(llm_width=64, stream_layer=0, cross_layer=0, **tuner)
    assert set(params["eval_sets"]) <= set(params["datasets"])
    assert set(params["train_sets"].split(",")) <= set(params["datasets"])


def test_protocols_keep_their_outputs_apart(tmp_path):
    names = [compose_params(tmp_path / f"{p}.yaml", p)["name"] for p in PROTOCOLS]
    assert len(set(names)) == len(names), names


def test_an_override_changes_one_knob_of_a_protocol(tmp_path):
    full = compose_params(tmp_path / "a.yaml", "full")
    deeper = compose_params(tmp_path / "b.yaml", "full", ("train.epochs=3",))
    assert deeper["train"]["epochs"] == 3 and full["train"]["epochs"] == 6
    deeper["train"]["epochs"] = 6
    assert deeper == full


def test_an_unknown_knob_is_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from stages.cli import main

    result = CliRunner().invoke(main, ["compose", "--protocol", "full", "--set", "tuner.nosuch=1",
                                       "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "tuner.nosuch" in result.output.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())
