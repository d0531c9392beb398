"""Reranking a first-stage run from the stores: the top `depth` candidates of each query scored by the reranker
over their stored states, the rest left below them in the first stage's order (the candidate set never changes).

What dev chooses (`choose_rerank`), with the fusion's significance guard (retrieval/fusion.py): the depth, and an
optional interpolation with the first stage's score (min-max weighted sum, as the fusion). A change that dev cannot
show better stays off: interpolation is kept only if it beats reranking alone at p < max_p, and reranking is kept
only if it beats the first stage at p < max_p; otherwise the reranked system is the first stage as it ranked.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..activations.store import ActivationStore
from ..common.atomic import atomic_file
from ..common.errors import DataError
from ..common.metrics import Run
from ..common.precision import autocast, feed_dtype
from ..retrieval.fusion import fuse, mean_ndcg, paired_difference
from .reranker import Reranker

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # the reranker's share; 1.0 = its score alone
SUFFIX = ">rerank"


def reranked_name(system: str) -> str:
    """`bm25` -> `bm25>rerank`."""
    return system + SUFFIX


class EncodedPassages:
    """The passages' encodings (query-independent), computed from the corpus store on first use and kept: a passage
    that is a candidate of many queries is read and encoded once."""

    def __init__(self, reranker: Reranker, store: ActivationStore, bf16: bool = True, batch_size: int = 64):
        self.reranker, self.store, self.bf16, self.batch_size = reranker, store, bf16, batch_size
        self.device = next(reranker.parameters()).device
        self._kept: dict[str, torch.Tensor] = {}

    def check(self, ids: list[str]) -> None:
        """Every passage must be in the corpus store, or one line names the first that is not."""
        missing = [i for i in ids if i not in self.store.row]
        if missing:
            raise DataError(f"{self.store.path}: no stored states for passage {missing[0]} of the run (a run of "
                            "another corpus, or a store built from another version of the set?)")

    @torch.inference_mode()
    def _encode(self, ids: list[str]) -> None:
        self.check(ids)
        order = sorted(ids, key=lambda i: -int(self.store.lengths[self.store.row[i]]))
        feed = feed_dtype(self.device, self.bf16)
        for b in range(0, len(order), self.batch_size):
            chunk = order[b : b + self.batch_size]
            states, mask = self.store.batch(chunk, self.reranker.cfg.layers, feed)
            with autocast(self.device, self.bf16):
                x, _ = self.reranker.encode({k: v.to(self.device) for k, v in states.items()}, mask.to(self.device))
            lengths = mask.sum(1).tolist()
            for i, doc in enumerate(chunk):
                self._kept[doc] = x[i, : int(lengths[i])].clone()

    def _store_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.store.fingerprint, sort_keys=True).encode()).hexdigest()[:16]

    def encode_all(self, progress: bool = True) -> None:
        """Every passage of the store, encoded and kept (what `save` writes beside a configuration's runs)."""
        todo = [i for i in self.store.ids if i not in self._kept]
        for b in tqdm(range(0, len(todo), 16 * self.batch_size), desc=f"encode {self.store.path.parent.name}",
                      unit="batch", disable=not progress):
            self._encode(todo[b : b + 16 * self.batch_size])

    def save(self, path: Path) -> None:
        """The kept encodings, in the dtype they were computed in, as one safetensors file: every passage's tokens
        concatenated, their offsets, and (metadata) the ids, the reranker's digest and the store it read."""
        ids = list(self._kept)
        rows = [self._kept[i] for i in ids]
        offsets = torch.tensor([0, *itertools.accumulate(r.shape[0] for r in rows)], dtype=torch.int64)
        tensors = {"tokens": torch.cat(rows).cpu().contiguous(), "offsets": offsets}
        meta = {"ids": json.dumps(ids), "reranker": self.reranker.digest(), "store": self._store_digest()}
        atomic_file(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load_saved(self, path: Path) -> bool:
        """Keep the encodings `save` wrote, where they were made by this reranker (else nothing is kept: False)."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if (meta.get("reranker"), meta.get("store")) != (self.reranker.digest(), self._store_digest()):
                return False
            tokens, offsets = f.get_tensor("tokens").to(self.device), f.get_tensor("offsets").tolist()
        for i, doc in enumerate(json.loads(meta["ids"])):
            self._kept[doc] = tokens[offsets[i] : offsets[i + 1]]
        return True

    def get(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, T, .] encodings of `ids` (right-padded) and their [N, T] keep mask (sink and padding off)."""
        self._encode(list(dict.fromkeys(i for i in ids if i not in self._kept)))
        rows = [self._kept[i] for i in ids]
        t = max(r.shape[0] for r in rows)
        x = rows[0].new_zeros((len(rows), t, rows[0].shape[1]))
        mask = torch.zeros((len(rows), t), dtype=torch.bool, device=x.device)
        for i, r in enumerate(rows):
            x[i, : r.shape[0]], mask[i, : r.shape[0]] = r, True
        if self.reranker.cfg.attention_sink:
            mask[mask.sum(1) > 1, 0] = False
        return x, mask


def top_candidates(run: Run, depth: int) -> dict[str, list[str]]:
    """Each query's first `depth` documents in the run's order."""
    if depth <= 0:
        raise DataError(f"the rerank depth must be a positive number of candidates, not {depth}")
    return {q: [d for d, _ in sorted(docs.items(), key=lambda x: (-x[1], x[0]))[:depth]] for q, docs in run.items()}


@torch.inference_mode()
def score_candidates(reranker: Reranker, states: dict[int, torch.Tensor], mask: torch.Tensor,
                     passages: EncodedPassages, candidates: list[list[str]], bf16: bool = True) -> list[list[float]]:
    """The reranker's scores of each query's candidates. states: {layer: [B, T, llm_width]} the queries' states,
    from the queries store or a question's own forward (`lmort ask`), with their [B, T] mask."""
    device = passages.device
    docs = list(dict.fromkeys(d for c in candidates for d in c))
    where = {d: i for i, d in enumerate(docs)}
    n = max(len(c) for c in candidates)
    pairs = torch.tensor([[where[d] for d in c] + [where[c[0]]] * (n - len(c)) for c in candidates], device=device)
    feed = feed_dtype(device, bf16)
    with autocast(device, bf16):
        q, q_keep = reranker.encode({k: v.to(device, feed) for k, v in states.items()}, mask.to(device))
        p, p_keep = passages.get(docs)
        scores = reranker.score(q, q_keep, p, p_keep, pairs).cpu()
    return [scores[i, : len(c)].tolist() for i, c in enumerate(candidates)]


def rerank_scores(reranker: Reranker, queries: ActivationStore, passages: EncodedPassages, run: Run, depth: int,
                  bf16: bool = True, batch_queries: int = 8, progress: bool = False) -> Run:
    """The reranker's score of each query's top `depth` candidates, the queries' states read from their store:
    {qid: {doc: score}}."""
    missing = [q for q in run if q not in queries.row]
    if missing:
        raise DataError(f"{queries.path}: no stored states for query {missing[0]} of the run (a run of another set?)")
    feed = feed_dtype(passages.device, bf16)
    top = top_candidates(run, depth)
    passages.check([d for docs in top.values() for d in docs])
    qids = sorted((q for q in top if top[q]), key=lambda q: -int(queries.lengths[queries.row[q]]))
    out: Run = {}
    for b in tqdm(range(0, len(qids), batch_queries), desc="rerank", unit="batch", disable=not progress):
        chunk = qids[b : b + batch_queries]
        states, mask = queries.batch(chunk, reranker.cfg.layers, feed)
        scores = score_candidates(reranker, states, mask, passages, [top[q] for q in chunk], bf16)
        for qid, s in zip(chunk, scores):
            out[qid] = dict(zip(top[qid], s))
    return out


def combine(first: Run, scores: Run, depth: int, weight: float) -> Run:
    """The reranked run: each query's top `depth` first-stage candidates ordered by the reranker's score (weight 1)
    or by the min-max weighted sum weight * reranker + (1 - weight) * first stage; the other candidates follow in
    the first stage's order, scored below them. Weight 0 is the first stage unchanged."""
    if weight == 0:
        return {q: dict(docs) for q, docs in first.items()}
    top = top_candidates(first, depth)
    out: Run = {}
    for q, docs in first.items():
        head = {d: scores[q][d] for d in top[q]}
        if weight < 1:
            head = fuse({q: head}, {q: {d: docs[d] for d in top[q]}}, "wsum", weight, k=len(head))[q]
        floor = min(head.values(), default=0.0) - 1.0
        rest = [d for d, _ in sorted(docs.items(), key=lambda x: (-x[1], x[0])) if d not in head]
        out[q] = {**dict(sorted(head.items(), key=lambda x: (-x[1], x[0]))),
                  **{d: floor - 1e-3 * i for i, d in enumerate(rest)}}
    return out


@dataclass(frozen=True)
class RerankChoice:
    """What dev chose for one first stage: the depth and the reranker's weight (0: off, the first stage alone)."""

    depth: int
    weight: float
    tuned_on: str
    dev_reranked: float  # nDCG@10 of the chosen combination on dev
    dev_first: float  # the first stage's on dev
    dev_alone: float  # reranking alone (weight 1) at its best depth
    dev_p: float  # paired t-test of the chosen combination against the first stage on dev
    guarded: bool = False  # True: dev could not show reranking better, so it is off
    best_weight: float = 1.0  # dev's best weight before the guard (the weight where not guarded)

    def as_dict(self) -> dict:
        return asdict(self)


def choose_rerank(first_dev: Run, scores_dev: Run, qrels: dict, depths: list[int], tuned_on: str,
                  max_p: float = 0.05) -> RerankChoice:
    """The depth (and weight) with the best dev nDCG@10; ties go to the smaller depth and to reranking alone. An
    interpolation that does not beat reranking alone at p < max_p is dropped; reranking that does not beat the first
    stage at p < max_p is switched off."""
    runs = {(k, w): combine(first_dev, scores_dev, k, w) for k in depths for w in WEIGHTS}
    ndcg = {key: mean_ndcg(run, qrels) for key, run in runs.items()}
    alone = max((key for key in ndcg if key[1] == 1.0), key=lambda key: (round(ndcg[key], 6), -key[0]))
    best = max(ndcg, key=lambda key: (round(ndcg[key], 6), -key[0], key[1]))
    if best[1] < 1.0:
        delta, p = paired_difference(runs[best], runs[alone], qrels)
        if delta <= 0 or p >= max_p:
            best = alone
    delta, p = paired_difference(runs[best], first_dev, qrels)
    guarded = delta <= 0 or p >= max_p
    return RerankChoice(best[0], 0.0 if guarded else best[1], tuned_on, ndcg[best], mean_ndcg(first_dev, qrels),
                        ndcg[alone], p, guarded, best[1])
