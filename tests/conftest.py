"""Fixtures: a tiny random Llama built from a config, and a tiny BEIR set the tests write themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tiny import make_tiny_model, write_beir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    return write_beir(tmp_path / "tiny")
