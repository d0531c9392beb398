"""Distillation targets for the reranker (issue 39, item 3): the project's own stronger scorers, MiniLM and BM25
fused as `lmort fuse` fuses them, score each training query's positive and the hard negatives it will be shown,
from text, once, before the first step. The reranker then learns their margins (Margin-MSE, Hofstätter et al.
2020) beside the labels' softmax: the labels say which passage is relevant, the teacher how much more than each
negative. MiniLM was trained on a billion pairs; its margins carry what two small labelled sets cannot.

The scores are kept in OUT/teacher.parquet (set, query, document, score): a resumed run and every design read the
same targets, and the table is the record of what the reranker was taught."""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..common.atomic import atomic_file
from ..common.metrics import Run
from ..data.bm25 import doc_text
from ..retrieval.baselines import minilm_encode
from ..retrieval.fusion import fuse
from ..tuner.training_sets import TrainingSet

TEACHERS = ("minilm+bm25",)  # the fused scorer; teacher_weight 1: MiniLM's cosine alone, 0: BM25's score alone
# (as `lmort fuse` reads a weight of 0 or 1: that run alone, its scores as they are)
Targets = dict[str, dict[str, Run]]  # set name -> query -> document -> the teacher's score


def scheduled_groups(sets: list[TrainingSet], schedule: list[list]) -> dict[str, dict[str, set[str]]]:
    """Per set, each query's documents (its positive and the hard negatives drawn with it) over every epoch's
    seeded batches (`schedule`: the epochs' lists of (set index, batch)): the pairs the teacher must score."""
    out: dict[str, dict[str, set[str]]] = {ts.data.name: {} for ts in sets}
    for batches in schedule:
        for s_i, batch in batches:
            groups = out[sets[s_i].data.name]
            for qid, pos, negs, _ in batch:
                groups.setdefault(qid, set()).update([pos, *negs])
    return out


def bm25_pair_scores(ts: TrainingSet, groups: dict[str, set[str]]) -> Run:
    """BM25's score of each (query, document) of `groups`, the index and tokenizer of pipeline/data/bm25.py."""
    from ..data.bm25 import BM25

    bm25 = BM25(ts.data.corpus)
    row = {d: i for i, d in enumerate(bm25.ids)}
    qids = sorted(groups)
    tokens = bm25s.tokenize([ts.data.queries[q] for q in qids], stopwords="en", return_ids=False,
                            show_progress=False)
    out = {}
    for q, toks in zip(qids, tokens):
        scores = bm25.retriever.get_scores(toks) if toks else np.zeros(len(bm25.ids))  # only stopwords: no match
        out[q] = {d: float(scores[row[d]]) for d in groups[q]}
    return out


def minilm_pair_scores(ts: TrainingSet, groups: dict[str, set[str]], bf16: bool, progress: bool) -> Run:
    """all-MiniLM-L6-v2's cosine of each (query, document) of `groups`."""
    qids = sorted(groups)
    docs = sorted(set().union(*groups.values()))
    name = ts.data.name
    q = minilm_encode([ts.data.queries[x] for x in qids], desc=f"teacher {name} queries", progress=progress,
                      bf16=bf16)
    d = minilm_encode([doc_text(ts.data.corpus[x]) for x in docs], desc=f"teacher {name} passages",
                      progress=progress, bf16=bf16)
    row = {x: i for i, x in enumerate(docs)}
    return {x: {doc: float(np.dot(q[i], d[row[doc]])) for doc in groups[x]} for i, x in enumerate(qids)}


def teacher_targets(sets: list[TrainingSet], schedule: list[list], weight: float, out: Path, bf16: bool = True,
                    progress: bool = True) -> Targets:
    """The fused teacher's score of every pair the schedule shows (min-max per query group, MiniLM at `weight`),
    read from OUT/teacher.parquet when a run already wrote it with the same teacher and weight for these pairs."""
    path = Path(out) / "teacher.parquet"
    wanted = scheduled_groups(sets, schedule)
    made_by = {b"teacher": TEACHERS[0].encode(), b"teacher_weight": repr(float(weight)).encode()}
    if path.is_file() and made_by.items() <= (pq.read_schema(path).metadata or {}).items():
        stored = read_targets(path)  # the same teacher and weight: reused where it holds every pair wanted
        if all(set(stored.get(s, {}).get(q, {})) >= docs for s, g in wanted.items() for q, docs in g.items()):
            return stored
    targets: Targets = {}
    for ts in tqdm(sets, desc="teacher", unit="set", disable=not progress):
        groups = wanted[ts.data.name]
        if not groups:
            continue
        dense = minilm_pair_scores(ts, groups, bf16, progress) if weight > 0 else None
        lexical = bm25_pair_scores(ts, groups) if weight < 1 else None
        targets[ts.data.name] = (lexical if dense is None else dense if lexical is None else
                                 fuse(dense, lexical, "wsum", weight, k=max(map(len, groups.values()))))
    Path(out).mkdir(parents=True, exist_ok=True)
    rows = [(s, q, d, v) for s, run in targets.items() for q, docs in run.items() for d, v in docs.items()]
    columns = ("set", "query", "document", "score")
    table = pa.table(dict(zip(columns, map(list, zip(*rows)))) if rows else {k: [] for k in columns})
    table = table.replace_schema_metadata(made_by)
    atomic_file(path, lambda tmp: pq.write_table(table, tmp))
    return targets


def read_targets(path: Path) -> Targets:
    out: Targets = {}
    for r in pq.read_table(path).to_pylist():
        out.setdefault(r["set"], {}).setdefault(r["query"], {})[r["document"]] = r["score"]
    return out
