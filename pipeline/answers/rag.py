"""Answer quality: the same reader given each retriever's passages, scored with SQuAD's EM and F1.

The prompt order and k are chosen on a dev slice (dev questions carved from train, BM25's passages), never on
the test questions; then every system answers the same seeded sample of test questions with that choice.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np

from ..common.config import RAG, Template
from ..common.errors import DataError
from ..common.metrics import Run
from ..data.beir import Prepared
from ..retrieval.hits import Hit, ranked_hits
from .reader import Reader, Shot, answer_scores, build_prompt, span_sequences

CLOSED_BOOK, ORACLE = "closed-book", "oracle"
READERS = ("generate", "span")  # the LLM generating from the passages' text; the span head on their stored states
# one (system, reader) row of the answer-quality table; the F1 gaps and the paired test are within one reader
COLUMNS = ["system", "reader", "F1", "EM", "answer in output", "recall@k", "F1 minus oracle", "F1 minus closed-book",
           "F1 minus bm25", "p", "retrieve ms/q", "read ms/q"]
log = logging.getLogger(__name__)


def passages_of(ds: Prepared, run: Run | None, qid: str, k: int) -> list[Hit]:
    """The top k of a run for one question (none without a run: closed-book)."""
    return [] if run is None else ranked_hits(run.get(qid, {}), ds, k)


def gold_of(ds: Prepared, split: str, qid: str) -> list[str]:
    return [d for d, g in ds.qrels[split].get(qid, {}).items() if g > 0]


def hits_for(ds: Prepared, split: str, qid: str, run: Run | None, k: int, oracle: bool) -> list[Hit]:
    """The passages a reader gets: the run's top k, the gold paragraph (oracle), or none (closed-book)."""
    if oracle:
        return [Hit(i, 1.0, d, ds.corpus[d]["title"], ds.corpus[d]["text"])
                for i, d in enumerate(gold_of(ds, split, qid)[:1], 1)]
    return passages_of(ds, run, qid, k)


def aggregate(qids: list[str], predictions: list[str], answers: dict[str, list[str]], recall: list[float]) -> dict:
    """EM, F1, answer-in-output (means over qids), Recall@k of the gold paragraph; the predictions, F1 per question."""
    scores = [answer_scores(p, answers[q]) for p, q in zip(predictions, qids)]
    return {"em": float(np.mean([s["em"] for s in scores])), "f1": float(np.mean([s["f1"] for s in scores])),
            "contains": float(np.mean([s["contains"] for s in scores])),
            "recall@k": float(np.mean(recall)) if recall else None,
            "predictions": dict(zip(qids, predictions)), "f1_per_question": {q: s["f1"] for q, s in zip(qids, scores)}}


def score_reader(reader: Reader, ds: Prepared, split: str, qids: list[str], answers: dict[str, list[str]],
                 run: Run | None, k: int, order: str, template: Template, oracle: bool = False,
                 max_new_tokens: int = RAG.max_new_tokens, batch_size: int = RAG.batch_size, desc: str = "read",
                 prompt: str = "plain",
                 shots: list[Shot] | None = None) -> dict:
    """The generative reader on one system's passages (`aggregate`'s scores), with the prompt style `prompt`
    (closed-book is always plain: no passages to copy from or to show with examples)."""
    prompts, recall, constraints = [], [], []
    for q in qids:
        hits = hits_for(ds, split, q, run, k, oracle)
        if run is not None or oracle:
            recall.append(float(any(h.id in gold_of(ds, split, q) for h in hits)))
        few = shots if prompt == "few-shot" and hits else None
        prompts.append(build_prompt(ds.queries[q], hits, template, reader.tail,
                                    "passages-first" if few else order, few, reader.end_of_turn))
        constraints.append(span_sequences(reader.tokenizer, hits))
    constrained = prompt == "constrained" and all(constraints)
    predictions, seconds = reader.generate(prompts, max_new_tokens, batch_size, desc=desc,
                                           constraints=constraints if constrained else None)
    result = aggregate(qids, predictions, answers, recall)
    result["generate_s_per_question"] = seconds / max(1, len(qids))
    result["prompts"], result["constraints"] = prompts, constraints if constrained else None
    return result


FAILURES = ("exact", "gold not read", "another passage chosen", "answer past the window", "wrong span")


def span_outcome(span, ds: Prepared, split: str, qid: str, refs: list[str], read: list, hits: list[Hit]) -> str:
    """Where the span reader's answer to one question went wrong (`FAILURES`): the gold paragraph was not among
    the passages read, another passage's span won, no reference answer lies in the gold paragraph's stored
    tokens, or the span in the gold paragraph is not the answer."""
    from .reader_data import locate

    if read and answer_scores(read[0].text, refs)["em"]:
        return "exact"
    gold = gold_of(ds, split, qid)
    if not any(h.id in gold for h in hits):
        return "gold not read"
    if read and read[0].doc_id not in gold:
        return "another passage chosen"
    passage = span.passages[gold[0]]
    places = [locate(passage, ds.corpus[gold[0]]["text"], a, span.passages.template) for a in refs]
    if not any(p is not None and p[0] >= 0 for p in places):
        return "answer past the window"
    return "wrong span"


def score_span_reader(span, queries, ds: Prepared, split: str, qids: list[str], answers: dict[str, list[str]],
                      run: Run | None, k: int, oracle: bool = False) -> dict:
    """The span reader (`span_read.StoredPassageReader`) on one system's passages, one question at a time: the
    question's states from the queries store, the passages' from the corpus store; `aggregate`'s scores, the
    reading milliseconds per question and the share of each outcome (`span_outcome`)."""
    predictions, recall, seconds, outcomes = [], [], 0.0, []
    for q in qids:
        hits = hits_for(ds, split, q, run, k, oracle)
        recall.append(float(any(h.id in gold_of(ds, split, q) for h in hits)))
        t0 = time.perf_counter()
        read = span.read_stored_question(queries, q, [h.id for h in hits])
        seconds += time.perf_counter() - t0
        predictions.append(read[0].text if read else "")
        outcomes.append(span_outcome(span, ds, split, q, answers[q], read, hits))
    result = aggregate(qids, predictions, answers, recall)
    result["read_ms_per_question"] = 1e3 * seconds / max(1, len(qids))
    result["outcomes"] = {f: outcomes.count(f) / max(1, len(qids)) for f in FAILURES}
    return result


def choose_prompt(reader: Reader, ds: Prepared, split: str, qids: list[str], answers: dict[str, list[str]],
                  run: Run, orders: list[str], ks: list[int], template: Template, max_new_tokens: int,
                  batch_size: int, prompts: tuple[str, ...] = ("plain",), shots: list[Shot] | None = None
                  ) -> tuple[dict, list[dict]]:
    """The prompt style, order and k with the best F1 on dev questions, reading `run`'s passages (BM25's): returns
    the choice and every candidate's dev scores. A few-shot prompt is passages-first only."""
    choices = []
    for prompt in prompts:
        for order in ("passages-first",) if prompt == "few-shot" else orders:
            for k in ks:
                r = score_reader(reader, ds, split, qids, answers, run, k, order, template,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 desc=f"dev {prompt} {order} k={k}", prompt=prompt, shots=shots)
                choices.append({"prompt": prompt, "order": order, "k": k, "dev F1": r["f1"], "dev EM": r["em"],
                                "dev answer in output": r["contains"], "generate s/q": r["generate_s_per_question"]})
                log.info(f"dev {prompt} {order} k={k}: F1 {r['f1']:.3f}, EM {r['em']:.3f}")
    return max(choices, key=lambda c: c["dev F1"]), choices


def choose_span_k(span, queries, ds: Prepared, split: str, qids: list[str], answers: dict[str, list[str]],
                  run: Run, ks: list[int]) -> tuple[dict, list[dict]]:
    """The number of passages the span reader reads, chosen by F1 on dev questions with `run`'s passages."""
    choices = []
    for k in ks:
        r = score_span_reader(span, queries, ds, split, qids, answers, run, k)
        choices.append({"k": k, "dev F1": r["f1"], "dev EM": r["em"], "dev recall@k": r["recall@k"],
                        "read ms/q": r["read_ms_per_question"]})
        log.info(f"span reader dev k={k}: F1 {r['f1']:.3f}, EM {r['em']:.3f}")
    return max(choices, key=lambda c: c["dev F1"]), choices


def answer_sentence(text: str, answer: str) -> str:
    """The sentence of `text` holding `answer` (the whole text if it is not found)."""
    at = text.find(answer)
    if at < 0:
        return text
    start = text.rfind(". ", 0, at)
    start = start + 2 if start >= 0 else 0
    end = text.find(". ", at + len(answer))
    return text[start : end + 1 if end >= 0 else len(text)].strip()


def few_shot_examples(ds: Prepared, answers: dict[str, list[str]], n: int, seed: int) -> list[Shot]:
    """`n` seeded train questions with a short answer, each shown with the sentence of its gold paragraph that
    holds the answer (whole paragraphs tripled the prompt: 1.4 s a question on 2 cores against 0.23 plain)."""
    train = [q for q in sorted(ds.qrels.get("train", {})) if q in answers and gold_of(ds, "train", q)
             and len(answers[q][0].split()) <= 4]
    out = []
    for q in random.Random(seed).sample(train, min(n, len(train))):
        d = gold_of(ds, "train", q)[0]
        passage = Hit(1, 1.0, d, ds.corpus[d]["title"], answer_sentence(ds.corpus[d]["text"], answers[q][0]))
        out.append(Shot(ds.queries[q], passage, answers[q][0]))
    return out


def time_generation(reader: Reader, scored: dict, n: int, max_new_tokens: int) -> float:
    """Milliseconds per question of the generative reader, one question at a time (batch of one), over the first
    `n` prompts `score_reader` built."""
    prompts = scored["prompts"][:n]
    constraints = scored["constraints"][:n] if scored["constraints"] else [None] * len(prompts)
    t0 = time.perf_counter()
    for p, c in zip(prompts, constraints):
        reader.generate([p], max_new_tokens, 1, progress=False, constraints=[c] if c else None)
    return 1e3 * (time.perf_counter() - t0) / max(1, len(prompts))


def with_gaps(rows: list[dict], f1_per_question: dict[str, dict[str, float]] | None = None,
              baseline: str = "bm25") -> list[dict]:
    """Each row's F1 minus the oracle's and minus closed-book's (None where that system was not run) and, given
    every system's F1 per question, minus the baseline's with the paired t-test's p over the same questions."""
    from ..retrieval.fusion import paired_t

    by = {r["system"]: r for r in rows}  # one reader's rows
    for r in rows:
        r["F1 minus oracle"] = r["F1"] - by[ORACLE]["F1"] if ORACLE in by else None
        r["F1 minus closed-book"] = r["F1"] - by[CLOSED_BOOK]["F1"] if CLOSED_BOOK in by else None
        if f1_per_question and baseline in f1_per_question and r["system"] != baseline:
            r["F1 minus bm25"], p = paired_t(f1_per_question[r["system"]], f1_per_question[baseline])
            r["p"] = f"{p:.2g}"
    return rows


def online_retriever(system: str, ds: Prepared, index_dirs: dict[str, Path], fusion: dict | None = None):
    """The retriever `system` answers with online, one question at a time, as `lmort search` would: BM25 (bm25s), a
    tuner variant (its index: the truncated LLM, the tuner, FAISS), MiniLM (its encoder, then FAISS over a flat index
    of the corpus' size, of random vectors: the search's cost does not depend on their values, and encoding the
    corpus again would not be timed), or `<system>+bm25` (both sides and the fusion, at the dev-chosen weight)."""
    from ..data.bm25 import BM25
    from ..retrieval.baselines import MiniLM
    from ..retrieval.fusion import FusedRetriever
    from ..tuner.encoders import open_index

    if system == "bm25":
        return BM25(ds.corpus)
    dense_name, _, fused = system.partition("+")
    weight = ((fusion or {}).get(system) or {}).get("dense_weight")
    if fused and weight is None:
        raise DataError(f"{system}: no dev-chosen fusion weight for {ds.name} (run `lmort fuse` first)")
    if dense_name == MiniLM.name:
        dense = MiniLM(ds.corpus, np.random.default_rng(0).standard_normal((len(ds.corpus), 384)).astype(np.float32))
    elif dense_name in index_dirs:
        dense = open_index(index_dirs[dense_name])[0]
    else:
        raise DataError(f"no index of {dense_name} to time its retrieval")
    return FusedRetriever(dense, BM25(ds.corpus), weight) if fused else dense


def time_retrieval(system: str, questions: list[str], ds: Prepared, index_dirs: dict[str, Path],
                   fusion: dict | None = None) -> float | None:
    """Seconds per question to retrieve online with `online_retriever(system)`, one question at a time, after one
    search that pays what a running system pays once (the LLM's blocks are built on first use). None for
    closed-book and the oracle."""
    if system in (CLOSED_BOOK, ORACLE):
        return None
    retriever = online_retriever(system, ds, index_dirs, fusion)
    if questions:
        retriever.search({"q": questions[0]}, 100)
    t0 = time.perf_counter()
    for q in questions:
        retriever.search({"q": q}, 100)
    return (time.perf_counter() - t0) / max(1, len(questions))
