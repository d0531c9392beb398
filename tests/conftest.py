"""Fixtures: a tiny random Llama built from a config, and a tiny BEIR set the tests write themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data import load_prepared
from pipeline.prepare import prepare_dataset
from pipeline.tiny import make_tiny_model, write_beir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    return write_beir(tmp_path / "tiny")


@pytest.fixture
def prepared(tiny_beir, tmp_path):
    """The tiny set, prepared (4 BM25 negatives a query)."""
    prepare_dataset(str(tiny_beir), tmp_path / "prepared", n_negatives=4)
    return load_prepared(tmp_path / "prepared")


def write_geometry(folder: Path, a_layer: int = 1, u_layer: int = 2, num_layers: int = 2) -> Path:
    """A geometry.json as `lmort analyze` writes it (the layers stage two reads), for tests that skip analyze."""
    path = Path(folder) / "geometry.json"
    path.write_text(f'{{"a_layer": {a_layer}, "u_layer": {u_layer}, "num_layers": {num_layers}}}')
    return path


@pytest.fixture(autouse=True)
def float32_unless_asked(monkeypatch):
    """Unit tests compute in float32 on every machine (their tolerances are float32's); the bfloat16 tests
    lift this and skip where the CPU has no native bf16."""
    monkeypatch.setenv("LMORT_BF16", "0")
