"""`lmort ask`: the LLM answers from its own memory. One forward of the prompt's prefix gives the query vector
(the tuner on the LLM's own states) and the key/value cache the answer is generated from."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .data import DataError, Prepared
from .fusion import fuse
from .hits import Hit
from .index import load_index, search
from .llm import Template
from .reader import ORDERS, Reader, build_prompt


@dataclass
class Answer:
    question: str
    answer: str
    passages: list[Hit]
    retriever: str
    order: str
    ms: dict[str, float] = field(default_factory=dict)  # forward, retrieve, generate, total


def fusion_weight(fusion_json: Path, data: str, system: str) -> float:
    """The dense weight dev chose for `<system>+bm25` on `data` (`lmort fuse`'s fusion.json)."""
    if not Path(fusion_json).exists():
        raise FileNotFoundError(f"{fusion_json}: no fusion choices (run `lmort fuse`, or ask with --retriever "
                                f"{system} or bm25)")
    choice = json.loads(Path(fusion_json).read_text()).get(data, {}).get("systems", {}).get(f"{system}+bm25")
    if choice is None:
        raise DataError(f"{fusion_json}: no {system}+bm25 choice for {data}")
    return float(choice["dense_weight"])


class Memory:
    """An index of a configuration, its tuner, the corpus it indexes, BM25 over the same corpus and the reader."""

    def __init__(self, index_dir: Path, ds: Prepared, model: str | None = None, fusion_json: Path | None = None):
        from .llm import default_device
        from .precision import resolve_compute_dtype
        from .tuner import Tuner, trained_on

        self.index, self.meta = load_index(index_dir)
        self.system = self.meta["system"]
        if model is not None and model != self.meta["model"]:
            raise DataError(f"{index_dir}: the index was built with {self.meta['model']}, not {model}")
        if self.meta.get("data") not in (None, ds.name):
            raise DataError(f"{index_dir}: the index holds {self.meta['data']}, not {ds.name}")
        if set(self.meta["ids"]) != set(ds.corpus):
            raise DataError(f"{index_dir}: its {len(self.meta['ids'])} documents are not {ds.name}'s corpus")
        self.tuner = Tuner.load(Path(self.meta["tuner"]))
        stores = trained_on(Path(self.meta["tuner"])) or {}
        for key in ("model", "template"):
            if key in stores and stores[key] != self.meta[key]:
                raise DataError(f"{index_dir}: the tuner {self.meta['tuner']} was trained on stores with another "
                                f"{key} ({stores[key]!r}) than the index's ({self.meta[key]!r})")
        self.template = Template(**self.meta["template"])
        self.query_max_length = self.meta["query_max_length"]
        self.ds = ds
        self.fusion_json = fusion_json or Path(index_dir).resolve().parents[2] / "fusion" / "fusion.json"
        self.reader = Reader(self.meta["model"], dtype=resolve_compute_dtype(self.meta.get("compute_dtype",
                                                                                          "float32"),
                                                                             default_device()))
        self._bm25 = None

    @property
    def bm25(self):
        from .bm25 import BM25

        if self._bm25 is None:
            self._bm25 = BM25(self.ds.corpus)
        return self._bm25

    def retrievers(self) -> tuple[str, ...]:
        return (f"{self.system}+bm25", self.system, "bm25")

    def ask(self, question: str, k: int = 3, retriever: str | None = None, order: str = "question-first",
            max_new_tokens: int = 24, bf16: bool = True) -> Answer:
        retriever = retriever or f"{self.system}+bm25"
        if not question.strip():
            raise DataError("the question is empty")
        if retriever not in self.retrievers():
            raise DataError(f"retriever {retriever!r}: this index offers {', '.join(self.retrievers())}")
        if order not in ORDERS:
            raise DataError(f"order {order!r}: one of {', '.join(ORDERS)}")
        if not 1 <= k <= len(self.meta["ids"]):
            raise DataError(f"k {k} outside 1..{len(self.meta['ids'])} (the corpus' size)")
        t0 = time.perf_counter()
        prefix_ids = self.reader.ids(self.template.format_query(question), True)
        # the stores truncate a query at query_max_length tokens: the vector reads the same tokens
        states, cache = self.reader.prefix_forward(prefix_ids, self.tuner.cfg.layers)
        t1 = time.perf_counter()
        run = self._retrieve(question, {layer: s[:, : self.query_max_length] for layer, s in states.items()},
                             retriever, k, bf16)
        passages = [Hit(r, s, d, self.ds.corpus[d]["title"], self.ds.corpus[d]["text"])
                    for r, (d, s) in enumerate(sorted(run.items(), key=lambda x: -x[1])[:k], 1)]
        t2 = time.perf_counter()
        parts = build_prompt(question, passages, self.template, self.reader.tail, order)
        if order == "question-first":  # the prefix's cache carries on: only the rest is computed
            rest_ids = self.reader.ids(parts.rest, False)
            answer = self.reader.continue_answer(prefix_ids, rest_ids, cache, max_new_tokens)
        else:  # the passages come first: the question is computed again inside the prompt
            answer = self.reader.generate([parts], max_new_tokens, batch_size=1, progress=False)[0][0]
        t3 = time.perf_counter()
        ms = {"forward": (t1 - t0) * 1e3, "retrieve": (t2 - t1) * 1e3, "generate": (t3 - t2) * 1e3,
              "total": (t3 - t0) * 1e3}
        return Answer(question, answer, passages, retriever, order, ms)

    def _retrieve(self, question: str, states, retriever: str, k: int, bf16: bool) -> dict[str, float]:
        depth = max(k, 100) if "+" in retriever else k
        dense = bm25 = None
        if retriever != "bm25":
            vec = self.reader.query_vector(self.tuner, states, bf16)
            scores, idx = search(self.index, vec, min(depth, self.index.ntotal))
            dense = {self.meta["ids"][j]: float(s) for s, j in zip(scores[0], idx[0]) if j >= 0}
        if retriever != self.system:
            bm25 = self.bm25.search({"q": question}, k=depth)["q"]
        if dense is not None and bm25 is not None:
            weight = fusion_weight(self.fusion_json, self.ds.name, self.system)
            return fuse({"q": dense}, {"q": bm25}, "wsum", weight, k=k)["q"]
        return dense if dense is not None else bm25
