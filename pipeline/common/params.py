"""Parameters: the knobs of every stage, as DVC's `params:` sees them. params.yaml is composed by Hydra (as
`dvc exp run` does) from configs/config.yaml, the default configuration, and one protocol of configs/protocol/."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import yaml

from .config import TrainConfig, TunerConfig, variant_config
from .errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_params(out: Path, protocol: str = "default", overrides: tuple[str, ...] = (),
                   conf: Path = CONF_DIR) -> dict:
    """Write to `out` the params.yaml that `dvc exp run -S protocol=<protocol> -S <override> ...` composes, by DVC's
    own Hydra call (so the bytes are the same), and return it."""
    import tempfile

    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory() as plugins:  # no Hydra plugins
        compose_and_dump(Path(out), str(Path(conf).resolve()), None, "config", plugins,
                         [f"protocol={protocol}", *overrides])
    return yaml.safe_load(Path(out).read_text())


def load_params(path: Path, overrides: tuple[str, ...] = ()) -> dict:
    """YAML params with `section.key=value` overrides (values parsed as YAML)."""
    params = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: not a mapping of parameters (a YAML file like params.yaml)")
    for item in overrides:
        key, _, value = item.partition("=")
        node = params
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return params


def _pick(cls, section: dict) -> dict:
    names = {f.name for f in fields(cls)}
    unknown = set(section) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} parameters: {sorted(unknown)}")
    return dict(section)


def train_config(params: dict) -> TrainConfig:
    return TrainConfig(**_pick(TrainConfig, params.get("train", {})))


def tuner_config(params: dict, variant: str, geometry: Path, llm_width: int, attention_sink: bool,
                 stored_layers: list[int] | None = None, pair: tuple[int, int] | None = None) -> TunerConfig:
    """The variant's tuner: (U, A) from the analysis' geometric rule, or `pair` (a sweep point, or the sweep's
    dev pick); `stored_layers` (the store's) for the fusion baselines."""
    g = json.loads(Path(geometry).read_text())
    u_layer, a_layer = pair if pair is not None else (g["u_layer"], g["a_layer"])
    section = dict(params.get("tuner", {}))
    size = section.pop("size", None)
    knobs = _pick(TunerConfig, section)
    knobs["attention_sink"] = attention_sink
    return variant_config(variant, u_layer=u_layer, a_layer=a_layer, last_layer=g["num_layers"], llm_width=llm_width,
                          size=size, stored_layers=stored_layers, **knobs)
