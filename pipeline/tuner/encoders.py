"""From an index folder to a retriever of new text: the one place that reads an index's meta.json back into the
encoder that made it (a tuner over the truncated frozen LLM, or the adapter) and checks that they belong together.
`lmort search`, `lmort ask` and the rag stage's timing all open an index here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.config import Template
from ..common.errors import DataError
from ..retrieval.index import load_index
from ..retrieval.retrievers import DenseRetriever
from .model import Tuner, trained_on


@dataclass
class TunerEncoder:
    """New text -> the truncated frozen LLM (up to the tuner's deepest layer, built on first use) -> the tuner:
    the vector the stores would have given, written with the index's template and query length."""

    tuner: Tuner
    model: str
    template: Template
    max_length: int
    compute_dtype: str = "float32"
    bf16: bool = True
    _llm: object = field(default=None, repr=False)

    @property
    def llm(self):
        if self._llm is None:
            from ..activations.llm import FrozenLLM, default_device
            from ..common.precision import resolve_compute_dtype

            self._llm = FrozenLLM(self.model, max_layer=max(self.tuner.cfg.layers),
                                  dtype=resolve_compute_dtype(self.compute_dtype, default_device()))
        return self._llm

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.tuner.encode_texts(self.llm, texts, self.template, self.max_length, bf16=self.bf16)


@dataclass
class AdapterEncoder:
    """New text -> the LLM with its LoRA adapters, pooled, the head (the adapter baseline)."""

    adapter: object
    template: Template
    max_length: int
    bf16: bool = True

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.adapter.encode([self.template.format_query(t) for t in texts], self.max_length, self.bf16,
                                   progress=False)


def index_piece(index_dir: Path, meta: dict, name: str) -> Path | None:
    """A piece an index reads beyond its folder (the tuner or adapter, `stores`, `prepared`, `configuration`), where
    its meta.json records it: relative to the index (an absolute or working-directory path from older indexes is
    taken as it is). None where the index records no such piece; one line naming it where it is missing."""
    recorded = meta.get(name) if name in ("tuner", "adapter") else (meta.get("paths") or {}).get(name)
    if recorded is None:
        return None
    path = Path(index_dir) / recorded
    if not path.exists() and Path(recorded).exists():
        path = Path(recorded)
    if not path.exists():
        raise DataError(f"{index_dir}/meta.json: its {name} ({recorded}, relative to the index) is missing: move the "
                        f"index together with what it reads, or rebuild it with `lmort index`")
    return path.resolve()


def load_encoder(index_dir: Path, meta: dict, bf16: bool = True) -> TunerEncoder | AdapterEncoder:
    """The encoder an index was built with (its meta.json `meta`); a tuner trained on stores of another model or
    template than the index's is refused."""
    template = Template(**meta["template"])
    if "adapter" in meta:
        from .adapter import Adapter

        return AdapterEncoder(Adapter.load(index_piece(index_dir, meta, "adapter")), template,
                              meta["query_max_length"], bf16)
    tuner_dir = index_piece(index_dir, meta, "tuner")
    stores_of = trained_on(tuner_dir) or {}
    for key in ("model", "template"):
        if key in stores_of and stores_of[key] != meta[key]:
            raise DataError(f"{index_dir}: the tuner {meta['tuner']} was trained on stores with another {key} "
                            f"({stores_of[key]!r}) than the index's ({meta[key]!r})")
    return TunerEncoder(Tuner.load(tuner_dir), meta["model"], template, meta["query_max_length"],
                        meta.get("compute_dtype", "float32"), bf16)


def open_index(index_dir: Path, bf16: bool = True) -> tuple[DenseRetriever, dict]:
    """The index of `lmort index` as a retriever of new text (its encoder in `.encode`), and its meta.json."""
    index, meta = load_index(index_dir)
    return DenseRetriever(meta["system"], index, meta["ids"], load_encoder(index_dir, meta, bf16)), meta
