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


@pytest.fixture(autouse=True)
def float32_unless_asked(monkeypatch):
    """Unit tests compute in float32 on every machine (their tolerances are float32's); the bfloat16 tests
    lift this and skip where the CPU has no native bf16."""
    monkeypatch.setenv("LMORT_BF16", "0")
