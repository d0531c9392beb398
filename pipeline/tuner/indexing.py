"""A trained tuner's index of a corpus: its vectors encoded from the stores, a FAISS index, and the run of a
split's queries (what `lmort index` writes and `lmort search`/`lmort ask` read)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..activations.llm import default_device
from ..activations.store import ActivationStore, check_compatible
from ..common.atomic import atomic_file
from ..common.metrics import write_trec_run
from ..retrieval.index import build_index, retrieve, write_index
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
