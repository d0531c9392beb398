"""Encode texts from the stores with a tuner, index them with FAISS, and search."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .metrics import Run
from .store import ActivationStore
from .tuner import Tuner


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


def index_dataset(tuner_dir: Path, queries: ActivationStore, corpus: ActivationStore, qids: list[str],
                  out: Path, run_path: Path, system: str, kind: str = "flat", k: int = 100, bf16: bool = True,
                  memory_gb: float = 4.0, data: str | None = None) -> dict:
    """Encode a corpus and its queries from the stores, write vectors + FAISS index + a TREC run file. A corpus
    whose layers fit in `memory_gb` is loaded first; a larger one is read in store order (contiguous chunks).
    `data` (the prepared set's name) goes into meta.json, so `lmort search` and `lmort ask` can show the texts."""
    import json
    import time

    from .llm import default_device
    from .metrics import write_trec_run
    from .store import check_compatible
    from .tuner import trained_on

    check_compatible([queries, corpus], trained_on(tuner_dir), what=f"the stores {tuner_dir} was trained on")
    t0 = time.time()
    tuner = Tuner.load(tuner_dir, default_device())
    if corpus.nbytes(tuner.cfg.layers) <= memory_gb * 1e9:
        corpus.load(tuner.cfg.layers)
    vectors = tuner.encode_store(corpus, desc=f"encode {corpus.path.parent.name}", bf16=bf16)
    encode_seconds = time.time() - t0
    index = build_index(vectors, kind)
    run = retrieve(index, list(corpus.ids), qids, tuner.encode_store(queries, qids, progress=False, bf16=bf16), k)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "vectors.npy", vectors)
    atomic_file(out / "index.faiss", lambda tmp: write_index(index, tmp))
    meta = {"tuner": str(tuner_dir), "system": system, "kind": kind, "data": data, "ids": list(corpus.ids),
            "model": corpus.fingerprint["model"], "template": queries.fingerprint["template"],
            "query_max_length": queries.fingerprint["max_length"],
            "compute_dtype": queries.fingerprint.get("compute_dtype", "float32"),
            "encode_seconds": round(encode_seconds, 1),
            "dim": int(vectors.shape[1]), "texts": len(vectors), "bf16": bf16}
    atomic_file(out / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta)))
    write_trec_run(run, run_path, system)
    return meta


def load_index(folder: Path):
    import json

    import faiss

    return faiss.read_index(str(Path(folder) / "index.faiss")), json.loads((Path(folder) / "meta.json").read_text())
