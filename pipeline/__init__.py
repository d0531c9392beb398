"""LMORT's library, in the card's two stages and what they serve (each layer imports only the ones above it):

    common/       errors, atomic writes, the typed configuration and params, metrics, tables
    data/         BEIR tables, fetching, preparation (BM25 hard negatives), SQuAD answers
    activations/  stage one: the frozen LLM, the extraction, the activation store (the one writer of the cache)
    retrieval/    FAISS indexes, run files, baselines, fusion with BM25
    tuner/        stage two: the tuner, its training from the stores alone, layer analysis, sweeps, indexing
    interaction/  the reranker: late interaction and cross-attention over the stored token states
    answers/      the memory: the readers, `lmort ask`, `lmort serve`, the rag protocol
    evaluation/   REPORT.md and the comparison across configurations

The click commands (stages/) are thin shells over these modules. From Python, the public names are importable from
here (`from pipeline import Index, Memory`; api.py), loaded on first use so that a stage starts without torch."""

from __future__ import annotations

__all__ = ["Index", "Memory", "Answer", "Hit", "DataError", "ConfigError", "StoreError", "OutputError"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
