"""A trained tuner's index of a corpus: its vectors encoded from the stores, a FAISS index, and the run of a
split's queries (what `lmort index` writes and `lmort search`/`lmort ask` read)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..activations.llm import default_device
from ..activations.store import ActivationStore, check_compatible
from ..retrieval.index import save_index
from .model import Tuner, trained_on


def index_dataset(tuner_dir: Path, queries: ActivationStore, corpus: ActivationStore, qids: list[str],
                  out: Path, run_path: Path, system: str, kind: str = "flat", k: int = 100, bf16: bool = True,
                  memory_gb: float = 4.0, data: str | None = None, prepared: Path | None = None,
                  configuration: Path | None = None) -> dict:
    """Encode a corpus and its queries from the stores, write vectors + FAISS index + a TREC run file. A corpus
    whose layers fit in `memory_gb` is loaded first; a larger one is read in store order (contiguous chunks).
    meta.json records what search and ask read, by paths relative to the index (`index_paths`): the tuner, the
    stores, the prepared set (`prepared`; `data` is its name) and the configuration's folder (`configuration`,
    cache/<name>: the fusion choice, span reader and reranker found there)."""
    check_compatible([queries, corpus], trained_on(tuner_dir), what=f"the stores {tuner_dir} was trained on")
    t0 = time.time()
    tuner = Tuner.load(tuner_dir, default_device())
    if corpus.nbytes(tuner.cfg.layers) <= memory_gb * 1e9:
        corpus.load(tuner.cfg.layers)
    vectors = tuner.encode_store(corpus, desc=f"encode {corpus.path.parent.name}", bf16=bf16)
    encode_seconds = time.time() - t0
    query_vectors = tuner.encode_store(queries, qids, progress=False, bf16=bf16)
    return save_index(vectors, list(corpus.ids), query_vectors, qids, out, run_path, system, kind=kind, k=k, meta={
        "tuner": relative_to(out, tuner_dir), "data": data,
        "paths": index_paths(out, stores=corpus.path.parent.parent, prepared=prepared, configuration=configuration),
        "model": corpus.fingerprint["model"],
        "template": queries.fingerprint["template"], "query_max_length": queries.fingerprint["max_length"],
        "compute_dtype": queries.fingerprint.get("compute_dtype", "float32"),
        "encode_seconds": round(encode_seconds, 1), "bf16": bf16})


def relative_to(index_dir: Path, path: Path) -> str:
    """`path` as meta.json records it: relative to the index folder, so that the two move together."""
    return os.path.relpath(Path(path).resolve(), Path(index_dir).resolve())


def index_paths(index_dir: Path, **paths: Path | None) -> dict[str, str]:
    """The pieces an index reads beyond its own folder (tuner/encoders.py `index_piece` resolves them)."""
    return {name: relative_to(index_dir, path) for name, path in paths.items() if path is not None}
