"""BM25 with bm25s: the lexical baseline and the miner of hard negatives."""

from __future__ import annotations

import bm25s

from ..common.metrics import Run


def doc_text(doc: dict[str, str]) -> str:
    return f"{doc['title']} {doc['text']}".strip()


class BM25:
    """A bm25s index over a corpus dict (id -> {title, text}); plain BM25, English stopwords, no stemming. A
    retriever (pipeline/retrieval/retrievers.py): `search(queries, k) -> Run`."""

    name = "bm25"  # its run files' stem
    method = "lucene"  # bm25s' scoring variant (a subclass may choose "bm25+", "bm25l", "atire", "robertson")

    def __init__(self, corpus: dict[str, dict[str, str]]):
        self.ids = list(corpus)
        self.retriever = bm25s.BM25(method=self.method)
        tokens = bm25s.tokenize([doc_text(corpus[i]) for i in self.ids], stopwords="en", show_progress=False)
        self.retriever.index(tokens, show_progress=False)

    def search(self, queries: dict[str, str], k: int = 100) -> Run:
        qids = list(queries)
        k = min(k, len(self.ids))
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False)
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return {q: {self.ids[d]: float(s) for d, s in zip(docs[i], scores[i]) if s > 0}
                for i, q in enumerate(qids)}
