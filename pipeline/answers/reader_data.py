"""The span reader's labels and batches, from stage one's stores: where each answer lies in its paragraph's stored
tokens, and the passages' and questions' states gathered for a batch.

Labels: the answer text's first occurrence in the paragraph's text (not the title), under the store's template
and case, mapped to tokens by the tokenizer's character offsets. The offsets come from tokenising the stored
text again; the token ids must equal the store's (checked), so a label indexes exactly the stored states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..activations.store import ActivationStore
from ..common.config import Template
from ..common.errors import DataError
from ..data.beir import Prepared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    """A stored passage as the reader sees it: the text it was tokenised from and each stored token's characters."""

    doc_id: str
    text: str  # the template's passage text, cased as the store (the characters offsets index)
    shown: str  # the same characters as written (the case kept), what an answer is cut from
    offsets: list[tuple[int, int]]  # per stored token (truncated at the store's max_length)

    def span_text(self, start: int, end: int) -> str:
        return self.shown[self.offsets[start][0] : self.offsets[end][1]].strip()

    def sentence_around(self, start: int, end: int) -> str:
        """The sentence holding the span, for a person to check the answer against."""
        a, b = self.offsets[start][0], self.offsets[end][1]
        left = max(self.shown.rfind(". ", 0, a), self.shown.rfind("\n", 0, a))
        right = self.shown.find(". ", b)
        return self.shown[left + 1 if left >= 0 else 0 : right + 1 if right >= 0 else len(self.shown)].strip()


class Passages:
    """Each corpus text's characters and token offsets, tokenised on first use (as the corpus store was)."""

    def __init__(self, ds: Prepared, tokenizer, template: Template, max_length: int,
                 store: ActivationStore | None = None):
        self.ds, self.tokenizer, self.template, self.max_length, self.store = ds, tokenizer, template, max_length, store
        self.shown_template = Template(template.query, template.passage, "keep")
        self._cache: dict[str, Passage] = {}

    def __getitem__(self, doc_id: str) -> Passage:
        if doc_id not in self._cache:
            doc = self.ds.corpus[doc_id]
            text = self.template.format_passage(doc["title"], doc["text"])
            shown = self.shown_template.format_passage(doc["title"], doc["text"])
            enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"][: self.max_length], enc["offset_mapping"][: self.max_length]
            if self.store is not None and doc_id in self.store.row and ids != self.store.token_ids(doc_id):
                raise DataError(f"{self.store.path}: the stored tokens of {doc_id} are not its text's under the "
                                "store's template and tokenizer (was the store built from another text?)")
            self._cache[doc_id] = Passage(doc_id, text, shown if len(shown) == len(text) else text,
                                          [tuple(o) for o in offsets])
        return self._cache[doc_id]


@dataclass(frozen=True)
class SpanExample:
    qid: str
    doc_id: str
    start: int  # first and last token of the answer in the stored passage
    end: int


def first_word_match(text: str, needle: str, begin: int) -> int:
    """The first occurrence of `needle` in text[begin:] that is not part of a longer word ("eta" is not found in
    "beta"); failing that, the first occurrence at all; -1 if none."""
    if not needle:
        return -1
    first = at = text.find(needle, begin)
    while at >= 0:
        before = text[at - 1] if at > 0 else " "
        after = text[at + len(needle)] if at + len(needle) < len(text) else " "
        if not (before.isalnum() and needle[0].isalnum()) and not (after.isalnum() and needle[-1].isalnum()):
            return at
        at = text.find(needle, at + 1)
    return first


def locate(passage: Passage, body: str, answer: str, template: Template) -> tuple[int, int] | None:
    """The tokens of `answer`'s first occurrence as a word in the passage's body text (after the title); None if
    absent, (-1, -1) if past the stored window."""
    needle = template._cased(answer.strip())
    at = first_word_match(passage.text, needle, max(0, len(passage.text) - len(template._cased(body))))
    if at < 0:
        return None
    a, b = at, at + len(needle)
    tokens = [i for i, (s, e) in enumerate(passage.offsets) if e > a and s < b and e > s]
    if not tokens or passage.offsets[tokens[-1]][1] < b:  # past the stored window
        return (-1, -1)
    return tokens[0], tokens[-1]


def span_examples(ds: Prepared, split: str, answers: dict[str, list[str]], passages: Passages,
                  questions: list[str] | None = None) -> tuple[list[SpanExample], dict]:
    """Every question of `split` with its gold paragraph and first answer located there; and the counts of those
    left out (answer not in the paragraph, or past the stored window)."""
    counts = {"questions": 0, "located": 0, "not_found": 0, "past_window": 0, "no_answer": 0}
    out = []
    for qid in questions if questions is not None else sorted(ds.qrels.get(split, {})):
        gold = [d for d, g in ds.qrels[split].get(qid, {}).items() if g > 0]
        counts["questions"] += 1
        if qid not in answers or not gold:
            counts["no_answer"] += 1
            continue
        passage = passages[gold[0]]
        where = locate(passage, ds.corpus[gold[0]]["text"], answers[qid][0], passages.template)
        if where is None:
            counts["not_found"] += 1
        elif where[0] < 0:
            counts["past_window"] += 1
        else:
            counts["located"] += 1
            out.append(SpanExample(qid, gold[0], *where))
    return out, counts


def length_batches(lengths: list[int], batch_size: int, rng: np.random.Generator | None, pool: int = 50) -> list:
    """Batches of indices with similar lengths (less padding); with `rng`, pools of `pool` batches are drawn at
    random and sorted inside, and the batches shuffled, so a batch stays a random draw of the training set."""
    order = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    batches = []
    for p in range(0, len(order), batch_size * pool):
        chunk = sorted(order[p : p + batch_size * pool].tolist(), key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def gather(store: ActivationStore, ids: list[str], layers: list[int], dtype: torch.dtype, what: str):
    """A padded batch of stored states, or one line naming the store and the missing text."""
    missing = [i for i in ids if i not in store.row]
    if missing:
        raise DataError(f"{store.path}: no stored states for {what} {missing[0]} (was the store built from "
                        "another version of the set?)")
    return store.batch(ids, layers, dtype)


def load_layers(stores: list[ActivationStore], layers: list[int], budget_gb: float) -> list[str]:
    """Load the stores' layers into memory while they fit `budget_gb` (GB, 1e9 bytes, as every `memory_gb` knob),
    smallest store first; the rest stream."""
    streamed, used = [], 0.0
    for store in sorted(stores, key=lambda s: s.nbytes(layers)):
        for layer in layers:
            size = store.nbytes([layer]) / 1e9
            if used + size <= budget_gb:
                store.load([layer])
                used += size
            else:
                streamed.append(f"{Path(store.path).name} layer {layer}")
    return streamed
