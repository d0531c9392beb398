"""`lmort prepare`: validated tables, BM25 hard negatives, a dev slice where a set has none."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ..common.metrics import evaluate
from ..common.paths import cache_root
from .beir import load_beir, source_digest, write_tables
from .bm25 import BM25
from .fetch import locate_dataset, resolve_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    """prepare's knobs: the one source of their defaults (the `prepare:` params and `lmort prepare`'s options)."""

    negatives: int = 16  # BM25 hard negatives kept per training query
    dev_fraction: float = 0.1  # training queries carved into dev where a set has no dev split
    seed: int = 0


DEFAULT = PrepareConfig()


def training_pairs(
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    bm25: BM25,
    judged: dict[str, set[str]],
    n_negatives: int = DEFAULT.negatives,
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




def prepare_dataset(
    data: str, out: Path, n_negatives: int = DEFAULT.negatives, dev_fraction: float = DEFAULT.dev_fraction,
    seed: int = DEFAULT.seed, md5: str | None = None,
) -> dict:
    """Validate `data`, mine hard negatives for its train (and dev) split, and write everything to `out`.

    Returns a summary with the BM25 sanity scores (nDCG@10 etc. per judged split).
    """
    folder = resolve_dataset(data, md5=md5)
    beir = load_beir(folder, name=Path(data).name)
    bm25 = BM25(beir.corpus)
    judged = judged_relevant({s: q for s, q in beir.qrels.items() if s in ('train', 'dev')})  # test never read
    extra, summary = {}, {"name": beir.name, "source": str(folder), "warnings": beir.warnings, "bm25": {}}
    if "train" in beir.qrels:
        train = beir.qrels["train"]
        if "dev" not in beir.qrels:
            train, dev = carve_dev(train, dev_fraction, seed)
            beir.qrels["dev"] = dev
            summary["dev_carved_from_train"] = {"queries": len(dev), "seed": seed}
        beir.qrels["train"] = train
        extra["pairs-train"] = training_pairs(beir.queries, train, bm25, judged, n_negatives)
    for split, qrels in beir.qrels.items():
        if split == "train":
            continue
        run = bm25.search({q: beir.queries[q] for q in qrels}, k=100)
        summary["bm25"][split] = evaluate(run, qrels)
    write_tables(beir, out, extra, source_record(folder, n_negatives, dev_fraction, seed))
    return summary


def source_record(folder: Path, n_negatives: int = DEFAULT.negatives, dev_fraction: float = DEFAULT.dev_fraction,
                  seed: int = DEFAULT.seed) -> dict:
    """What a prepared set was made from and how: reuse requires all of it to match."""
    return {"path": str(Path(folder).resolve()), "sha256": source_digest(folder),
            "settings": {"n_negatives": n_negatives, "dev_fraction": dev_fraction, "seed": seed}}


def prepared_dir(data: str) -> Path:
    """Where `lmort prepare` puts a data set by default: cache/data/<name>."""
    return cache_root() / "data" / Path(data).name


def ensure_prepared(data: str):
    """A prepared folder as given, or the default one for a data set name (prepared on first use)."""
    from .beir import load_prepared

    p = Path(data)
    if (p / "manifest.json").exists():
        return load_prepared(p)
    target = prepared_dir(data)
    if (target / "manifest.json").exists():
        stale = stale_reason(target, data)
        if stale is None:
            return load_prepared(target)
        log.info(f"{target}: {stale}; preparing it again")
    prepare_dataset(data, target)
    return load_prepared(target)


def stale_reason(prepared: Path, data: str) -> str | None:
    """Why a prepared folder does not belong to the source `data` names now (None: it does). Where no source
    is found locally (a prepared folder copied to another machine), the folder is trusted as it is."""
    import json

    folder = locate_dataset(data)
    if folder is None:
        return None
    recorded = json.loads((Path(prepared) / "manifest.json").read_text()).get("source") or {}
    now = source_record(folder, **recorded.get("settings", {}))
    if recorded.get("path") != now["path"]:
        return f"prepared from {recorded.get('path', 'an unrecorded source')}, not {now['path']}"
    if recorded.get("sha256") != now["sha256"]:
        return f"its source {now['path']} changed since (sha256 {str(recorded.get('sha256'))[:12]}... -> " \
               f"{now['sha256'][:12]}...)"
    return None
