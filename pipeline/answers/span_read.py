"""Answering with the span reader: the question's states (its own forward, or the queries store) against the k
retrieved passages' states from the corpus store. The LLM never runs over a passage at answer time.

Each passage's best span gets its score (start + end logit); the answer is the best over the k passages, as
DrQA and DPR's reader pick it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..activations.store import ActivationStore, shared_fingerprint
from ..common.config import Template
from ..common.precision import autocast, feed_dtype
from ..data.beir import Prepared
from .reader_data import Passage, Passages, gather
from .span_reader import SpanReader, best_spans


@dataclass(frozen=True)
class SpanAnswer:
    text: str
    doc_id: str
    rank: int  # the passage's rank in the retrieval
    score: float  # the span's start + end logit
    sentence: str  # the sentence around the span, for a person to check
    context: str = ""  # the passage as the reader read it (the template's passage text: title and text)
    start: int = 0  # the answer is context[start:end]
    end: int = 0


def answer_chars(passage: Passage, start: int, end: int) -> tuple[int, int]:
    """The characters of the passage that tokens start..end cover, without the spaces at either end (what
    `Passage.span_text` returns is passage.shown[a:b])."""
    a, b = passage.offsets[start][0], passage.offsets[end][1]
    text = passage.shown[a:b]
    return a + len(text) - len(text.lstrip()), b - len(text) + len(text.rstrip())


class StoredPassageReader:
    """The span reader with the corpus store it reads passages from (refused if trained on other stores)."""

    def __init__(self, reader_dir: Path, corpus: ActivationStore, ds: Prepared, tokenizer, bf16: bool = True):
        self.reader = SpanReader.load(reader_dir, shared_fingerprint(corpus.fingerprint))
        self.corpus, self.bf16 = corpus, bf16
        self.layers = self.reader.cfg.layers
        fp = corpus.fingerprint
        self.passages = Passages(ds, tokenizer, Template(**fp["template"]), fp["max_length"], corpus)

    @torch.inference_mode()
    def read(self, question: dict[int, torch.Tensor], doc_ids: list[str]) -> list[SpanAnswer]:
        """question: {layer: [1, Tq, width]} (every token real); doc_ids: the retrieved passages, best first ->
        one answer per passage, best score first."""
        if not doc_ids:
            return []
        device = next(self.reader.parameters()).device
        feed = feed_dtype(device, self.bf16)
        p, p_mask = gather(self.corpus, doc_ids, self.layers, feed, "passage")
        k = len(doc_ids)
        q = {layer: question[layer].to(device, feed).expand(k, -1, -1) for layer in self.layers}
        q_mask = torch.ones(q[self.layers[0]].shape[:2], dtype=torch.bool, device=device)
        with autocast(device, self.bf16):
            start, end = self.reader({k_: v.to(device) for k_, v in p.items()}, p_mask.to(device), q, q_mask)
        s, e, score = best_spans(start, end, self.reader.cfg.max_answer_tokens)
        out = []
        for rank, doc in enumerate(doc_ids, 1):
            passage, i, j = self.passages[doc], int(s[rank - 1]), int(e[rank - 1])
            a, b = answer_chars(passage, i, j)
            out.append(SpanAnswer(passage.shown[a:b], doc, rank, float(score[rank - 1]), passage.sentence_around(i, j),
                                  passage.shown, a, b))
        return sorted(out, key=lambda a: -a.score)

    def read_stored_question(self, queries: ActivationStore, qid: str, doc_ids: list[str]) -> list[SpanAnswer]:
        """The same, with the question's states from the queries store (the rag stage's test questions)."""
        states, mask = gather(queries, [qid], self.layers, torch.float32, "question")
        length = int(mask.sum())
        return self.read({layer: v[:, :length] for layer, v in states.items()}, doc_ids)
