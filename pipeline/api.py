"""LMORT from Python: the public names, importable from `pipeline` itself.

    from pipeline import Index, Memory

    index = Index("cache/default/index/lmort/scifact")     # what `lmort index` wrote; meta.json names the rest
    hits = index.search("what do statins do to the heart?", k=3)   # [Hit(rank, score, id, title, text)]
    vectors = index.encode(["a new passage"])              # the tuner's vectors of new text (numpy, one row each)

    memory = Memory("cache/default/index/lmort/scifact")   # + BM25, the fusion dev chose, reader, reranker
    answer = memory.ask("what do statins do to the heart?", k=3)
    answer.answer, answer.ms, answer.to_dict()             # {answer, score, start, end, passage, ms, ...}

Like Pyserini's `LuceneSearcher(index_dir)`, an index works on its own: its meta.json records, relative to the index,
the tuner, the stores, the prepared set and the configuration's folder. Bad input raises the library's errors
(`DataError`, ...: one line naming the file, field or knob), the same the command line prints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .answers.ask import Answer, Memory, open_prepared
from .common.errors import ConfigError, DataError, OutputError, StoreError
from .retrieval.hits import Hit, ranked_hits

__all__ = ["Index", "Memory", "Answer", "Hit", "DataError", "ConfigError", "StoreError", "OutputError"]


class Index:
    """A tuner's (or the adapter's) index of a corpus, searchable with new text: each query goes through the frozen
    LLM (cut after the tuner's deepest layer) and the tuner, then FAISS. `bf16`: the tuner under bf16 autocast where
    the device has native bf16."""

    def __init__(self, path: str | Path, bf16: bool = True):
        from .common.quiet import quiet_libraries
        from .tuner.encoders import open_index

        quiet_libraries()
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise DataError(f"{self.path}: no index here (no meta.json); build one with `lmort index`")
        self.retriever, self.meta = open_index(self.path, bf16)
        self.system: str = self.meta["system"]
        self._ds = None

    @property
    def ds(self):
        """The prepared set the index holds (titles and texts of the hits), read on first use."""
        if self._ds is None:
            self._ds = open_prepared(self.path, self.meta)
        return self._ds

    def __len__(self) -> int:
        return len(self.meta["ids"])

    def encode(self, texts: str | list[str]) -> np.ndarray:
        """Vectors of new text, one row a text (float32, the index's dimension), as the index's queries are."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        _check_texts(texts)
        return np.asarray(self.retriever.encode(texts), dtype=np.float32)

    def search(self, queries: str | list[str], k: int = 10) -> list[Hit] | list[list[Hit]]:
        """The top `k` hits of one query (a list of `Hit`), or of each of several (a list of lists, in order)."""
        one = isinstance(queries, str)
        texts = [queries] if one else list(queries)
        _check_texts(texts)
        if not isinstance(k, int) or k < 1:
            raise DataError(f"k {k!r}: at least 1")
        run = self.retriever.search({str(i): t for i, t in enumerate(texts)}, k)
        hits = [ranked_hits(run.get(str(i), {}), self.ds, k) for i in range(len(texts))]
        return hits[0] if one else hits


def _check_texts(texts: list[str]) -> None:
    if not texts:
        raise DataError("no text given")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"text {i}: empty or not a string ({text!r})")
