"""BM25 with bm25s: the lexical baseline and the miner of hard negatives."""

from __future__ import annotations

import random

import bm25s
import pyarrow as pa

from .metrics import Run


def doc_text(doc: dict[str, str]) -> str:
    return f"{doc['title']} {doc['text']}".strip()


class BM25:
    """A bm25s index over a corpus dict (id -> {title, text}); plain BM25, English stopwords, no stemming."""

    def __init__(self, corpus: dict[str, dict[str, str]]):
        self.ids = list(corpus)
        self.retriever = bm25s.BM25()
        tokens = bm25s.tokenize([doc_text(corpus[i]) for i in self.ids], stopwords="en", show_progress=False)
        self.retriever.index(tokens, show_progress=False)

    def search(self, queries: dict[str, str], k: int = 100) -> Run:
        qids = list(queries)
        k = min(k, len(self.ids))
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False)
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return {q: {self.ids[d]: float(s) for d, s in zip(docs[i], scores[i]) if s > 0}
                for i, q in enumerate(qids)}


def training_pairs(
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    bm25: BM25,
    judged: dict[str, set[str]],
    n_negatives: int = 16,
    depth: int = 100,
) -> pa.Table:
    """One row per query with positives and BM25 hard negatives.

    A negative is never in `judged[q]` (every document judged relevant to q in any split).
    """
    qids = [q for q, d in qrels.items() if any(g > 0 for g in d.values())]
    run = bm25.search({q: queries[q] for q in qids}, k=depth)
    pos, neg = [], []
    for q in qids:
        pos.append(sorted(d for d, g in qrels[q].items() if g > 0))
        ranked = sorted(run.get(q, {}).items(), key=lambda x: -x[1])
        neg.append([d for d, _ in ranked if d not in judged.get(q, set())][:n_negatives])
    return pa.table({"query_id": qids, "positive_ids": pos, "negative_ids": neg})


def judged_relevant(qrels_by_split: dict[str, dict[str, dict[str, int]]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for split in qrels_by_split.values():
        for q, docs in split.items():
            out.setdefault(q, set()).update(d for d, g in docs.items() if g > 0)
    return out


def carve_dev(qrels: dict[str, dict[str, int]], fraction: float, seed: int, max_queries: int = 200):
    """Split train qrels into (train, dev) by query, seeded; used where a set has no dev split."""
    qids = sorted(qrels)
    rng = random.Random(seed)
    rng.shuffle(qids)
    n = max(1, min(max_queries, int(round(len(qids) * fraction))))
    dev = set(qids[:n])
    return ({q: d for q, d in qrels.items() if q not in dev}, {q: d for q, d in qrels.items() if q in dev})



