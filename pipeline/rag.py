"""Answer quality: the same reader given each retriever's passages, scored with SQuAD's EM and F1 (issue 24).

The prompt order and k are chosen on a dev slice (dev questions carved from train, BM25's passages), never on
the test questions; then every system answers the same seeded sample of test questions with that choice.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np

from .data import DataError, Prepared
from .hits import Hit
from .llm import Template
from .metrics import Run
from .reader import Reader, answer_scores, build_prompt

CLOSED_BOOK, ORACLE = "closed-book", "oracle"
COLUMNS = ["system", "F1", "EM", "answer in output", "recall@k", "F1 minus oracle", "F1 minus closed-book",
           "F1 minus bm25", "p", "retrieve s/q", "generate s/q"]  # one system's row of the answer-quality table
log = logging.getLogger(__name__)


def answers_file(data: str, given: str | Path | None) -> Path:
    """answers.jsonl: the one given, or the one beside the set's BEIR folder."""
    from .fetch import locate_dataset

    if given:
        return Path(given)
    folder = locate_dataset(data)
    if folder is None:
        raise FileNotFoundError(f"no BEIR folder for {data}, so no answers.jsonl: put it under $LMORT_DATA/{data}")
    return Path(folder) / "answers.jsonl"


def read_answers(path: Path) -> dict[str, list[str]]:
    """answers.jsonl: one {"_id", "answers": [...]} per line; a bad line names the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no answers file (one {{\"_id\", \"answers\"}} per line; SQuAD's is built "
                                "by pipeline/fetch.py or found beside the BEIR folder)")
    out = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(obj.get("_id"), str):
                raise DataError(f"{path}:{lineno}: field '_id' must be a string")
            answers = obj.get("answers")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise DataError(f"{path}:{lineno}: field 'answers' must be a non-empty list of strings")
            out[obj["_id"]] = answers
    return out


def sample_questions(qids: list[str], n: int, seed: int) -> list[str]:
    """A seeded sample of n questions (all of them when n is larger), in a stable order."""
    qids = sorted(qids)
    return sorted(random.Random(seed).sample(qids, n)) if n < len(qids) else qids


def passages_of(ds: Prepared, run: Run | None, qid: str, k: int) -> list[Hit]:
    """The top k of a run for one question (none without a run: closed-book)."""
    if run is None:
        return []
    ranked = sorted(run.get(qid, {}).items(), key=lambda x: -x[1])[:k]
    return [Hit(i, s, d, ds.corpus[d]["title"], ds.corpus[d]["text"]) for i, (d, s) in enumerate(ranked, 1)]


def gold_of(ds: Prepared, split: str, qid: str) -> list[str]:
    return [d for d, g in ds.qrels[split].get(qid, {}).items() if g > 0]


def score_reader(reader: Reader, ds: Prepared, split: str, qids: list[str], answers: dict[str, list[str]],
                 run: Run | None, k: int, order: str, template: Template, oracle: bool = False,
                 max_new_tokens: int = 24, batch_size: int = 16, desc: str = "read") -> dict:
    """EM, F1 and answer-in-output (means over qids), Recall@k of the gold paragraph, and generation seconds per
    question, for one system's passages; with the predictions."""
    prompts, recall = [], []
    for q in qids:
        gold = gold_of(ds, split, q)
        if oracle:
            hits = [Hit(i, 1.0, d, ds.corpus[d]["title"], ds.corpus[d]["text"]) for i, d in enumerate(gold[:1], 1)]
        else:
            hits = passages_of(ds, run, q, k)
        if run is not None or oracle:
            recall.append(float(any(h.id in gold for h in hits)))
        prompts.append(build_prompt(ds.queries[q], hits, template, reader.tail, order))
    predictions, seconds = reader.generate(prompts, max_new_tokens, batch_size, desc=desc)
    scores = [answer_scores(p, answers[q]) for p, q in zip(predictions, qids)]
    return {"em": float(np.mean([s["em"] for s in scores])), "f1": float(np.mean([s["f1"] for s in scores])),
            "contains": float(np.mean([s["contains"] for s in scores])),
            "recall@k": float(np.mean(recall)) if recall else None,
            "generate_s_per_question": seconds / max(1, len(qids)),
            "predictions": dict(zip(qids, predictions)), "f1_per_question": {q: s["f1"] for q, s in zip(qids, scores)}}


def choose_prompt(reader: Reader, ds: Prepared, split: str, qids: list[str], answers: dict[str, list[str]],
                  run: Run, orders: list[str], ks: list[int], template: Template, max_new_tokens: int,
                  batch_size: int) -> tuple[dict, list[dict]]:
    """The prompt order and k with the best F1 on dev questions, reading `run`'s passages (BM25's): returns the
    choice and every candidate's dev scores."""
    choices = []
    for order in orders:
        for k in ks:
            r = score_reader(reader, ds, split, qids, answers, run, k, order, template,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, desc=f"dev {order} k={k}")
            choices.append({"order": order, "k": k, "dev F1": r["f1"], "dev EM": r["em"],
                            "dev answer in output": r["contains"], "generate s/q": r["generate_s_per_question"]})
            log.info(f"dev {order} k={k}: F1 {r['f1']:.3f}, EM {r['em']:.3f}")
    return max(choices, key=lambda c: c["dev F1"]), choices


def with_gaps(rows: list[dict], f1_per_question: dict[str, dict[str, float]] | None = None,
              baseline: str = "bm25") -> list[dict]:
    """Each row's F1 minus the oracle's and minus closed-book's (None where that system was not run) and, given
    every system's F1 per question, minus the baseline's with the paired t-test's p over the same questions."""
    from .fusion import paired_t

    by = {r["system"]: r for r in rows}
    for r in rows:
        r["F1 minus oracle"] = r["F1"] - by[ORACLE]["F1"] if ORACLE in by else None
        r["F1 minus closed-book"] = r["F1"] - by[CLOSED_BOOK]["F1"] if CLOSED_BOOK in by else None
        if f1_per_question and baseline in f1_per_question and r["system"] != baseline:
            r["F1 minus bm25"], p = paired_t(f1_per_question[r["system"]], f1_per_question[baseline])
            r["p"] = f"{p:.2g}"
    return rows


def time_retrieval(system: str, questions: list[str], ds: Prepared, index_dirs: dict[str, Path],
                   fusion: dict | None = None) -> float | None:
    """Seconds per question to retrieve online, one question at a time, as `lmort search` would: BM25 (bm25s),
    a tuner variant (the truncated LLM, the tuner, FAISS), MiniLM (its encoder, then FAISS over a flat index of
    the corpus' size), or a fused system (both sides and the fusion). None for closed-book and the oracle."""
    from .bm25 import BM25
    from .fusion import fuse

    if system in (CLOSED_BOOK, ORACLE):
        return None
    dense_name, _, fused = system.partition("+")
    weight = ((fusion or {}).get(system) or {}).get("dense_weight")
    if fused and weight is None:
        raise DataError(f"{system}: no dev-chosen fusion weight for {ds.name} (run `lmort fuse` first)")
    bm25 = BM25(ds.corpus) if fused or system == "bm25" else None
    dense = None if system == "bm25" else _dense_searcher(dense_name, ds, index_dirs)
    t0 = time.perf_counter()
    for q in questions:
        runs = {}
        if dense is not None:
            runs["dense"] = dense(q)
        if bm25 is not None:
            runs["bm25"] = bm25.search({"q": q})["q"]
        if len(runs) == 2:
            fuse({"q": runs["dense"]}, {"q": runs["bm25"]}, "wsum", weight)
    return (time.perf_counter() - t0) / max(1, len(questions))


def _dense_searcher(system: str, ds: Prepared, index_dirs: dict[str, Path]):
    from .index import build_index, load_index, search

    if system == "minilm-l6":
        from .baselines import minilm_encode

        # the cost of a MiniLM query: its encoder on the question, then a flat search over as many vectors as
        # the corpus has (random ones: the search's cost does not depend on their values)
        rng = np.random.default_rng(0)
        index = build_index(rng.standard_normal((len(ds.corpus), 384)).astype(np.float32))

        def minilm(q: str) -> dict[str, float]:
            vec = minilm_encode([q], desc="MiniLM query", progress=False)
            scores, idx = search(index, vec, 100)
            return {str(j): float(s) for s, j in zip(scores[0], idx[0])}
        return minilm
    if system not in index_dirs:
        raise DataError(f"no index of {system} to time its retrieval")
    from .llm import FrozenLLM, default_device
    from .precision import resolve_compute_dtype
    from .tuner import Tuner

    index, meta = load_index(index_dirs[system])
    tuner = Tuner.load(Path(meta["tuner"]))
    llm = FrozenLLM(meta["model"], max_layer=max(tuner.cfg.layers),
                    dtype=resolve_compute_dtype(meta.get("compute_dtype", "float32"), default_device()))
    template = Template(**meta["template"])

    def dense(q: str) -> dict[str, float]:
        vec = tuner.encode_texts(llm, [q], template, meta["query_max_length"])
        scores, idx = search(index, vec, 100)
        return {meta["ids"][j]: float(s) for s, j in zip(scores[0], idx[0]) if j >= 0}
    return dense
