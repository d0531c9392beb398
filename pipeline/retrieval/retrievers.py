"""One interface for every retriever, as Pyserini's searchers share one: `search(queries, k) -> Run`.

BM25 (pipeline/data/bm25.py), MiniLM (baselines.py), a tuner's or the adapter's index (`DenseRetriever` with an
encoder of new text, tuner/encoders.py) and a fused pair (fusion.py's `FusedRetriever`) all answer it, so
`lmort search`, `lmort ask`, the baselines stage and the rag stage's timing never ask which kind they hold. A
retriever with a FAISS index also takes query vectors already computed (`lmort ask` shares one forward of the
question between the query vector and the span reader).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..common.metrics import Run
from .index import retrieve


class Retriever(Protocol):
    """Queries (id -> text) in, a TREC-style run (query id -> {doc id: score}, best first, at most k) out."""

    name: str

    def search(self, queries: dict[str, str], k: int = 100) -> Run: ...


class DenseRetriever:
    """A FAISS index over a corpus (`ids` in index order) and `encode`, which turns query texts into its vectors."""

    def __init__(self, name: str, index, ids: list[str], encode: Callable[[list[str]], np.ndarray]):
        self.name, self.index, self.ids, self.encode = name, index, list(ids), encode

    def search(self, queries: dict[str, str], k: int = 100, vectors: np.ndarray | None = None) -> Run:
        """`vectors`: the queries' vectors, already encoded (one row per query, in `queries`' order)."""
        qids = list(queries)
        vectors = self.encode([queries[q] for q in qids]) if vectors is None else vectors
        return retrieve(self.index, self.ids, qids, vectors, k)
