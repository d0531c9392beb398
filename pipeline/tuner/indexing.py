"""A trained tuner's index of a corpus: its vectors encoded from the stores, a FAISS index, and the run of a
split's queries (what `lmort index` writes and `lmort search`/`lmort ask` read)."""

from __future__ import annotations

import time
from pathlib import Path

from ..activations.llm import default_device
from ..activations.store import ActivationStore, check_compatible
from ..retrieval.index import save_index
from .model import Tuner, trained_on


def index_dataset(tuner_dir: Path, queries: ActivationStore, corpus: ActivationStore, qids: list[str],
                  out: Path, run_path: Path, system: str, kind: str = "flat", k: int = 100, bf16: bool = True,
                  memory_gb: float = 4.0, data: str | None = None) -> dict:
    """Encode a corpus and its queries from the stores, write vectors + FAISS index + a TREC run file. A corpus
    whose layers fit in `memory_gb` is loaded first; a larger one is read in store order (contiguous chunks).
    `data` (the prepared set's name) goes into meta.json, so `lmort search` and `lmort ask` can show the texts."""
    check_compatible([queries, corpus], trained_on(tuner_dir), what=f"the stores {tuner_dir} was trained on")
    t0 = time.time()
    tuner = Tuner.load(tuner_dir, default_device())
    if corpus.nbytes(tuner.cfg.layers) <= memory_gb * 1e9:
        corpus.load(tuner.cfg.layers)
    vectors = tuner.encode_store(corpus, desc=f"encode {corpus.path.parent.name}", bf16=bf16)
    encode_seconds = time.time() - t0
    query_vectors = tuner.encode_store(queries, qids, progress=False, bf16=bf16)
    return save_index(vectors, list(corpus.ids), query_vectors, qids, out, run_path, system, kind=kind, k=k, meta={
        "tuner": str(tuner_dir), "data": data, "model": corpus.fingerprint["model"],
        "template": queries.fingerprint["template"], "query_max_length": queries.fingerprint["max_length"],
        "compute_dtype": queries.fingerprint.get("compute_dtype", "float32"),
        "encode_seconds": round(encode_seconds, 1), "bf16": bf16})
