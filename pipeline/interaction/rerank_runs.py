"""`lmort rerank` over a configuration: each eval set's first-stage runs reranked from the stores, the depth and
weight chosen where the fusion is chosen (the set's own dev split in-domain, the zero-shot dev collection
otherwise: retrieval/fusion.py `tuning_set`), never on a test split; and `lmort rerank-run` for any one run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..activations.store import open_stores, shared_fingerprint
from ..common.config import run_config, section
from ..common.metrics import Run, read_trec_run, write_trec_run
from ..data.prepare import ensure_prepared
from ..retrieval.fusion import paired_difference, significance, tuning_set
from ..retrieval.runs import read_checked_run
from .rerank import EncodedPassages, choose_rerank, combine, rerank_scores, reranked_name
from .rerank_train import rerank_stage_config
from .reranker import Reranker


def chosen_reranker(folder: Path, stores: dict | None = None) -> Reranker | None:
    """The design `lmort train-reranker` kept (FOLDER/chosen.json), refused if trained on other stores; None where
    the configuration trains none."""
    record = Path(folder) / "chosen.json"
    if not record.is_file():
        raise FileNotFoundError(f"{folder}: no chosen.json (run `lmort train-reranker`)")
    design = json.loads(record.read_text()).get("design")
    return Reranker.load(Path(folder) / design / "best", stores) if design else None


class SetReranker:
    """One data set's stores and the reranker's passage encodings, kept across the runs reranked on it."""

    def __init__(self, reranker: Reranker, stores: Path, data: str, bf16: bool = True):
        """`reranker`: checked against the stores already (`chosen_reranker`)."""
        self.ds = ensure_prepared(data)
        self.queries, corpus = open_stores(stores, self.ds.name)
        self.reranker, self.bf16 = reranker, bf16
        self.passages = EncodedPassages(reranker, corpus, bf16)

    def scores(self, run: Run, depth: int) -> Run:
        return rerank_scores(self.reranker, self.queries, self.passages, run, depth, self.bf16, progress=True)


def rerank_configuration(params: dict, reranker_dir: Path, stores: Path, runs_dirs: list[Path],
                         dev_dirs: list[Path], out: Path) -> dict:
    """Every eval set's `reranker.first_stages` runs reranked, each choice made on its tuning set's dev run; writes
    OUT/runs/<set>/<split>/<system>>rerank.trec and returns what was chosen with the paired tests on the split."""
    stage, split = rerank_stage_config(params), run_config(params).eval_split
    if not stage.designs or not stage.first_stages:
        return {}
    max_p = section(params, "fusion").max_p
    readers: dict[str, SetReranker] = {}
    choices: dict[tuple, dict] = {}
    report: dict = {}
    for data in params.get("eval_sets", []):
        tuning = tuning_set(data, params)
        if tuning is None:
            continue
        tune_data, tune_split = tuning
        for name in (data, tune_data):
            if name not in readers:
                q, _ = open_stores(stores, ensure_prepared(name).name)
                reranker = chosen_reranker(reranker_dir, shared_fingerprint(q.fingerprint))
                readers[name] = SetReranker(reranker, stores, name)
        target, dev = readers[data], readers[tune_data]
        report[target.ds.name] = _rerank_set(target, dev, tune_split, split, stage, runs_dirs, dev_dirs, out,
                                             choices, max_p)
        target.passages.encode_all()  # query-independent: stored beside the runs, read by ask, search and serve
        target.passages.save(encoded_path(out, target.ds.name))
    return report


def encoded_path(rerank_dir: Path, data: str) -> Path:
    """Where `lmort rerank` stores a set's passage encodings (rerank.py `EncodedPassages.save`)."""
    return Path(rerank_dir) / "encoded" / f"{data}.safetensors"


def _rerank_set(target: SetReranker, dev: SetReranker, tune_split: str, split: str, stage, runs_dirs, dev_dirs,
                out: Path, choices: dict, max_p: float) -> dict:
    ds = target.ds
    tested = {"bm25": read_checked_run(runs_dirs, ds.name, split, "bm25", ds.qrels[split])}
    per_set: dict = {"tuned_on": f"{dev.ds.name}/{tune_split}", "design": target.reranker.cfg.design,
                     "systems": {}}
    for system in stage.first_stages:
        key = (dev.ds.name, tune_split, system)
        if key not in choices:
            first_dev = read_checked_run(dev_dirs, dev.ds.name, tune_split, system, dev.ds.qrels[tune_split])
            scores = dev.scores(first_dev, max(stage.depths))
            choices[key] = choose_rerank(first_dev, scores, dev.ds.qrels[tune_split], list(stage.depths),
                                         f"{dev.ds.name}/{tune_split}", max_p).as_dict()
        choice = choices[key]
        first = tested.get(system) or read_checked_run(runs_dirs, ds.name, split, system, ds.qrels[split])
        t0 = time.time()
        scores = target.scores(first, choice["depth"])
        seconds = time.time() - t0
        name = reranked_name(system)
        run = combine(first, scores, choice["depth"], choice["weight"])
        write_trec_run(run, Path(out) / "runs" / ds.name / split / f"{name}.trec", name)
        delta, p = paired_difference(run, first, ds.qrels[split])
        # what dev's best would have scored without the guard: reported, never chosen on
        best = combine(first, scores, choice["depth"], choice["best_weight"])
        unguarded, p_unguarded = paired_difference(best, first, ds.qrels[split])
        tested[system], tested[name] = first, run
        per_set["systems"][name] = {**choice, "first_stage": system, "test_minus_first": delta, "p_first": p,
                                    "unguarded_minus_first": unguarded, "p_unguarded": p_unguarded,
                                    "ms_per_query": round(1000 * seconds / max(1, len(first)), 1)}
    per_set["significance"] = significance(ds.qrels[split], tested, max_p=max_p)
    return per_set


def rerank_one_run(reranker_dir: Path, stores: Path, data: str, run_path: Path, depth: int, weight: float,
                   out: Path, bf16: bool = True) -> Run:
    """`lmort rerank-run`: one TREC run of any prepared set with its stores reranked (no retraining)."""
    from ..common.errors import DataError

    if depth <= 0:
        raise DataError(f"--depth must be a positive number of candidates, not {depth}")
    if not 0 < weight <= 1:
        raise DataError(f"--weight is the reranker's share in (0, 1], not {weight}")
    target_ds = ensure_prepared(data)
    q, _ = open_stores(stores, target_ds.name)
    reranker = chosen_reranker(reranker_dir, shared_fingerprint(q.fingerprint))
    if reranker is None:
        raise FileNotFoundError(f"{reranker_dir}: its configuration trained no reranker (reranker.designs is empty)")
    target = SetReranker(reranker, stores, data, bf16)
    first = read_trec_run(run_path)
    run = combine(first, target.scores(first, depth), depth, weight)
    write_trec_run(run, out, Path(out).stem)
    return run
