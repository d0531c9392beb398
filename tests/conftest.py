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


def build_world(root: Path, n_docs: int, n_queries: int, negatives: int) -> dict:
    """A tiny 2-block model, a prepared tiny set and its stores of layers 0, 1, 2 (root/stores/tiny/*.zarr):
    what the stage-two and memory tests train and search on."""
    from pipeline.extract import ExtractSpec, extract

    model = str(make_tiny_model(root / "model", layers=2))
    write_beir(root / "tiny", n_docs=n_docs, n_queries=n_queries)
    prepare_dataset(str(root / "tiny"), root / "prepared", n_negatives=negatives)
    ds = load_prepared(root / "prepared")
    for kind, length in (("corpus", 24), ("queries", 8)):
        spec = ExtractSpec(model, (0, 1, 2), kind, length, compute_dtype="float32", shard_tokens=256, chunk_tokens=16)
        extract(ds, spec, root / "stores" / "tiny" / f"{kind}.zarr", progress=False)
    return {"root": root, "model": model, "ds": ds, "stores": root / "stores"}


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
