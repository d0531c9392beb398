"""What a training run reads: each training set's prepared pairs and dev qrels beside its two activation stores.

Opening the sets (and recording their identity for DVC) lives here, apart from the loop in train.py, so the
stages that only need the data (the analysis' identity record, the sweep, the scaling curve) do not import it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..activations.store import ActivationStore, open_stores
from ..data.beir import Prepared
from ..data.prepare import ensure_prepared


@dataclass
class TrainingSet:
    """One data set's training pairs with its two stores; `dev` pairs select the model."""

    data: Prepared
    queries: ActivationStore | None  # None for the adapter baseline, which reads text, not stores
    corpus: ActivationStore | None
    pairs: list[dict] = field(default_factory=list)
    dev_qrels: dict | None = None


def open_training_sets(stores: Path | None, names: list[str], pairs: bool = True) -> list[TrainingSet]:
    """Each named set's prepared data with its two stores (none without `stores`), its training pairs (when
    `pairs`) and its dev qrels."""
    sets = []
    for name in names:
        ds = ensure_prepared(name)
        queries, corpus = open_stores(stores, ds.name) if stores is not None else (None, None)
        sets.append(TrainingSet(ds, queries, corpus, ds.pairs("train").to_pylist() if pairs else [],
                                ds.qrels.get("dev")))
    return sets


def sample_queries(sets: list[TrainingSet], max_queries: int | None, seed: int) -> list[TrainingSet]:
    """A seeded uniform sample of `max_queries` training queries pooled over all sets (each set keeps its share),
    from the same stores: the data-scaling curve's points differ only in this number. Smaller samples are
    subsets of larger ones (one permutation), so the curve adds queries rather than redrawing them."""
    if max_queries is None:
        return sets
    pooled = [(s_i, r) for s_i, ts in enumerate(sets) for r in range(len(ts.pairs))]
    keep = torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed))[:max_queries].tolist()
    chosen: dict[int, list[int]] = {}
    for i in sorted(keep):
        s_i, r = pooled[i]
        chosen.setdefault(s_i, []).append(r)
    # every set stays (with its dev split, so dev scores compare across the curve), even with no queries drawn
    return [replace(ts, pairs=[ts.pairs[r] for r in chosen.get(s_i, [])]) for s_i, ts in enumerate(sets)]


def training_identity(names: list[str], stores: Path | None = None) -> dict:
    """What a training run (or the analysis) reads of each named set: the prepared tables (sha256 per file) and,
    with `stores`, its two stores' identities. DVC's train and analyze stages depend on this record instead of
    the whole data and stores folders, so adding an evaluation-only set reruns neither."""
    out = {}
    for name in names:
        ds = ensure_prepared(name)
        record = {"prepared": {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                               for f in sorted(Path(ds.folder).iterdir()) if f.is_file()}}
        if stores is not None:
            queries, corpus = open_stores(stores, ds.name)
            record["stores"] = {"queries": queries.identity(), "corpus": corpus.identity()}
        out[ds.name] = record
    return out
