"""Training and indexing the adapter baseline (adapter.py): the tuners' loop (loop.py: the same training pairs,
hard negatives, loss, batch size, schedule and dev selection) with the LLM in every step, and its corpus encoded
online into the index `lmort search` reads (no store holds an adapted LLM's states). No checkpoint: a killed run
starts again."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..activations.extract import texts_of
from ..common.atomic import atomic_file
from ..common.config import Template, TrainConfig
from ..common.precision import autocast
from ..data.beir import Prepared
from ..retrieval.index import save_index
from .adapter import Adapter, AdapterConfig
from .indexing import index_paths, relative_to
from .loop import Trainee, batch_layout, contrastive_loss, fit, fresh_state, optimizer, optimizer_step
from .training_sets import TrainingSet


def tokenized(adapter: Adapter, ds: Prepared) -> tuple[dict, dict]:
    """Every query's and passage's token ids, written with the adapter's template (as the stores' texts are)."""
    template, cfg = Template(**adapter.cfg.template), adapter.cfg
    out = []
    for kind, length in (("queries", cfg.query_max_length), ("corpus", cfg.passage_max_length)):
        ids, texts = texts_of(ds, kind, template)
        out.append(dict(zip(ids, adapter.llm.tokenize(texts, length)[0])))
    return out[0], out[1]


def encode_set(adapter: Adapter, ds: Prepared, qids: list[str], bf16: bool = True) -> tuple[list[str], np.ndarray,
                                                                                          np.ndarray]:
    """The set's corpus ids, its passages' vectors and the `qids` queries' vectors, written with the adapter's
    template and encoded online (no store holds an adapted LLM's states)."""
    template, cfg = Template(**adapter.cfg.template), adapter.cfg
    dids, passages = texts_of(ds, "corpus", template)
    corpus = adapter.encode(passages, cfg.passage_max_length, bf16, desc=f"adapter {ds.name} corpus")
    query_text = dict(zip(*texts_of(ds, "queries", template)))
    queries = adapter.encode([query_text[q] for q in qids], cfg.query_max_length, bf16, progress=False)
    return dids, corpus, queries


def set_encoder(adapter: Adapter, bf16: bool = True):
    """The dev scorer's encoder (loop.SetEncoder): the set's corpus and queries encoded online."""
    def encode(ts: TrainingSet, qids: list[str]):
        dids, corpus, queries = encode_set(adapter, ts.data, qids, bf16)
        return dids, corpus, qids, queries
    return encode


def adapter_step(adapter: Adapter, opt, texts: tuple[dict, dict], batch, amp, clip: float) -> float:
    """One optimizer step: the batch's queries and documents through the LLM with its adapters (forward and
    backward), the tuners' InfoNCE; returns the loss."""
    qids, docs, targets, false_neg = batch_layout(batch)
    queries, corpus = texts
    with amp:
        loss = contrastive_loss(adapter([queries[q] for q in qids]), adapter([corpus[d] for d in docs]),
                                targets, false_neg, 1.0 / adapter.cfg.temperature)
    return optimizer_step(adapter, opt, loss, clip)


def train_adapter(sets: list[TrainingSet], cfg: AdapterConfig, train_cfg: TrainConfig, out: Path,
                  device: str = "cpu", progress: bool = True) -> dict:
    """Train the adapter on the sets' training pairs (the tuners' batches, loss, schedule and dev selection; the
    step budget is `train_cfg.max_steps_per_epoch`) into `out` (best/, train.json). No checkpoint: a killed run
    starts again."""
    out = Path(out)
    torch.manual_seed(train_cfg.seed)
    adapter = Adapter(cfg, device)
    texts = [tokenized(adapter, ts.data) for ts in sets]
    opt, schedule = optimizer([p for p in adapter.parameters() if p.requires_grad], sets, train_cfg)
    amp = autocast(device, train_cfg.bf16)
    trainee = Trainee(adapter, inputs=lambda batches: ((texts[s_i], batch) for s_i, batch in batches),
                      step=lambda x: adapter_step(adapter, opt, x[0], x[1], amp, train_cfg.clip),
                      encode=set_encoder(adapter, train_cfg.bf16), save=adapter.save)
    state = fit(trainee, schedule, sets, train_cfg, fresh_state(), out, progress, desc="adapter epoch")
    summary = {"variant": "adapter", "trainable_parameters": adapter.trainable_parameters(),
               "steps": state["step"], "train_seconds": round(state["seconds"], 1),
               "seconds_per_step": round(state["seconds"] / max(1, state["step"]), 3),
               "best_epoch": state["best_epoch"], "dev_ndcg@10": state["best"], "adapter": asdict(cfg),
               "train": asdict(train_cfg), "losses": state["losses"], "dev": state["dev"]}
    atomic_file(out / "train.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    return summary


def index_adapter(adapter_dir: Path, ds: Prepared, qids: list[str], out: Path, run_path: Path, system: str,
                  kind: str = "flat", k: int = 100, bf16: bool = True) -> dict:
    """As `index_dataset` for a tuner, but the corpus is encoded online (the adapter changes the LLM's states, so
    no store holds them): vectors, FAISS index, meta.json (what `lmort search` reads) and a TREC run."""
    adapter = Adapter.load(adapter_dir)
    cfg = adapter.cfg
    t0 = time.time()
    dids, vectors, queries = encode_set(adapter, ds, qids, bf16)
    return save_index(vectors, dids, queries, qids, out, run_path, system, kind=kind, k=k, meta={
        "adapter": relative_to(out, adapter_dir), "data": ds.name,
        "paths": index_paths(out, prepared=ds.folder), "model": cfg.model, "template": cfg.template,
        "query_max_length": cfg.query_max_length, "encode_seconds": round(time.time() - t0, 1), "bf16": bf16})
