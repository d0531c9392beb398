"""Fixtures: a tiny random Llama built from a config, and a tiny BEIR set the tests write themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline.data.beir import load_prepared
from pipeline.data.prepare import prepare_dataset
from pipeline.data.tiny import make_tiny_model, write_beir

HEAVY = ("test_store.py", "test_stage_two.py")  # after the DVC tests, the modules of several-second tests


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, one thread a worker (and its subprocesses): the workers already fill the cores, and OpenMP threads
    of two processes on the same core wait on each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The DVC tests are most of the suite's time. xdist (`--dist load --maxschedchunk 1`, pyproject.toml) starts
    each worker on the next two tests of the collection, then hands out one test at a time to whichever worker is
    free: each DVC test opens a different worker's pair, so that they start at once side by side, and the heavier
    modules come next, so that the suite does not end waiting on one worker's long test."""
    long = [item for item in items if item.path.name == "test_dvc.py"]
    rest = sorted((item for item in items if item.path.name != "test_dvc.py"), key=lambda i: i.path.name not in HEAVY)
    for i, item in enumerate(long):
        rest.insert(2 * i, item)
    items[:] = rest


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
    from pipeline.activations.extract import ExtractSpec, extract

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


TUNER = dict(width=16, blocks=1, heads=2, out_dim=16, dropout=0.0, temperature=0.1)  # a small tuner for the tests


@pytest.fixture(scope="session")
def memory_world(tmp_path_factory):
    """A tiny model, a prepared set with titles, its stores, a trained tuner and its index (built once: the ask and
    rag tests read it)."""
    from pipeline.activations.store import ActivationStore
    from pipeline.common.config import TrainConfig, TunerConfig
    from pipeline.tuner.indexing import index_dataset
    from pipeline.tuner.train import train
    from pipeline.tuner.training_sets import TrainingSet

    world = build_world(tmp_path_factory.mktemp("memory"), n_docs=30, n_queries=24, negatives=2)
    root, model, ds = world["root"], world["model"], world["ds"]
    queries, corpus = (ActivationStore(root / "stores" / "tiny" / f"{k}.zarr") for k in ("queries", "corpus"))
    cfg = TunerConfig(llm_width=32, stream_layer=2, cross_layer=0, **TUNER)
    train([TrainingSet(ds, queries, corpus, ds.pairs("train").to_pylist(), ds.qrels["dev"])], cfg,
          TrainConfig(epochs=1, batch_size=8), root / "tuner", progress=False)
    index_dataset(root / "tuner" / "best", queries, corpus, list(ds.qrels["test"]), root / "index" / "lmort" / "tiny",
                  root / "run.trec", "lmort", bf16=False, data=ds.name, prepared=ds.folder,
                  configuration=root)
    return {"root": root, "model": model, "ds": ds, "index": root / "index" / "lmort" / "tiny"}


@pytest.fixture(autouse=True)
def float32_unless_asked(monkeypatch):
    """Unit tests compute in float32 on every machine (their tolerances are float32's); the bfloat16 tests
    lift this and skip where the CPU has no native bf16."""
    monkeypatch.setenv("LMORT_BF16", "0")
