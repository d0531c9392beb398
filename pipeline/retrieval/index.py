"""FAISS indexes of text vectors: build, write, load, and search them into TREC runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.atomic import atomic_file
from ..common.metrics import Run, write_trec_run


def build_index(vectors: np.ndarray, kind: str = "flat", use_gpu: bool | None = None):
    """An inner-product FAISS index: exact ("flat", the BEIR protocol), or "hnsw" / "ivf" for large corpora.
    Moved to the GPU when faiss-gpu is installed and a GPU is present (or use_gpu says so)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        nlist = max(1, int(np.sqrt(len(vectors))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, nlist // 8)
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat, hnsw, ivf)")
    gpu_ok = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if (use_gpu is None and gpu_ok) or (use_gpu and gpu_ok):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(vectors)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def to_run(qids: list[str], dids: list[str], scores: np.ndarray, idx: np.ndarray) -> Run:
    return {q: {dids[j]: float(s) for s, j in zip(scores[i], idx[i]) if j >= 0} for i, q in enumerate(qids)}


def retrieve(index, dids: list[str], qids: list[str], qvecs: np.ndarray, k: int = 100) -> Run:
    scores, idx = search(index, qvecs, k)
    return to_run(qids, dids, scores, idx)


def write_index(index, path) -> None:
    import faiss

    if hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex):
        index = faiss.index_gpu_to_cpu(index)
    faiss.write_index(index, str(path))


def save_index(vectors: np.ndarray, ids: list[str], query_vectors: np.ndarray, qids: list[str], out: Path,
               run_path: Path, system: str, meta: dict, kind: str = "flat", k: int = 100) -> dict:
    """What `lmort index` writes for any encoder (a tuner reading the stores, the adapter encoding online): the
    vectors, the FAISS index, meta.json (`meta`, the encoder's own fields, then the index's) and the TREC run of
    `qids`. Returns meta.json's content."""
    import json

    index = build_index(vectors, kind)
    run = retrieve(index, ids, qids, query_vectors, k)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "vectors.npy", vectors)
    atomic_file(out / "index.faiss", lambda tmp: write_index(index, tmp))
    meta = {"system": system, "kind": kind, "ids": list(ids), **meta, "dim": int(vectors.shape[1]),
            "texts": len(vectors)}
    atomic_file(out / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta)))
    write_trec_run(run, run_path, system)
    return meta


def load_index(folder: Path):
    import json

    import faiss

    return faiss.read_index(str(Path(folder) / "index.faiss")), json.loads((Path(folder) / "meta.json").read_text())
