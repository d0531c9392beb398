"""The cache runner (stage one): run the frozen LLM once per text and write chosen layers to a store.

Shards are independent tasks: in this process, or on dask workers (a LocalCluster or any scheduler),
each worker loading the model once. Knows the LLM and the store writer; knows nothing about training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..common.atomic import check_writable
from ..common.config import Template
from ..common.precision import dtype_name, resolve_compute_dtype
from ..data.beir import Prepared
from .llm import FrozenLLM, default_device
from .store import (
    CHUNK_TOKENS,
    DTYPES,
    FORMAT_VERSION,
    SHARD_TOKENS,
    Plan,
    StoreWriter,
    build_history,
    store_bytes,
    store_lock,
    write_shard,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    """The `extract:` knobs: the one source of their defaults (the default configuration's `extract:` params and
    `lmort extract`'s / `lmort analyze`'s options). `layers` (the extra layers to store) is each configuration's
    own choice, tied to its layer selection, so it has no library default."""

    last_layer: bool = False  # also store layer L (then every block of the LLM runs)
    layers: str = ""  # extra layers to store, comma-separated
    query_max_length: int = 64
    passage_max_length: int = 256
    dtype: str = "float16"  # how states are stored
    compute_dtype: str = "auto"  # how the LLM computes them: bfloat16 where native, else float32
    case: str = Template.case  # lower-case every text before tokenising (upper-case text otherwise breaks retrieval)
    # how a query is written before tokenising: `lmort ask` reads the query vector off the prompt's own forward,
    # so a chat model's stores use the prompt's prefix here (the rag protocol: "<|im_start|>user\n{text}")
    query_template: str = Template.query
    chunk_tokens: int = CHUNK_TOKENS  # rows per Zarr chunk of a layer (pipeline/activations/store.py says why 256)


EXTRACT = ExtractConfig()


@dataclass(frozen=True)
class ExtractSpec:
    """Everything that decides a store's content; its fields (plus model hashes) form the fingerprint."""

    model: str
    layers: tuple[int, ...]
    kind: str  # "corpus" or "queries"
    max_length: int
    template: Template = field(default_factory=Template)
    dtype: str = "float16"  # how states are stored
    compute_dtype: str = "auto"  # how the LLM computes them; resolved to float32 or bfloat16 before any work
    shard_tokens: int = SHARD_TOKENS
    chunk_tokens: int = EXTRACT.chunk_tokens
    batch_tokens: int | None = None  # None: FrozenLLM's default for its device


_MODELS: dict[tuple[str, int, str], FrozenLLM] = {}


def cached_llm(model: str, max_layer: int, compute_dtype: str = "auto") -> FrozenLLM:
    """One truncated model per process (a dask worker loads it once and keeps it)."""
    dtype = resolve_compute_dtype(compute_dtype, default_device())
    key = (model, max_layer, dtype_name(dtype))
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = FrozenLLM(model, max_layer=max_layer, dtype=dtype)
    return _MODELS[key]


def texts_of(ds: Prepared, kind: str, template: Template) -> tuple[list[str], list[str]]:
    if kind == "corpus":
        ids = list(ds.corpus)
        return ids, [template.format_passage(**ds.corpus[i]) for i in ids]
    if kind == "queries":
        ids = list(ds.queries)
        return ids, [template.format_query(ds.queries[i]) for i in ids]
    raise ValueError(f"kind must be corpus or queries, not {kind!r}")


def fingerprint(spec: ExtractSpec, llm: FrozenLLM, ids: list[str], texts: list[str]) -> dict:
    tok = hashlib.sha256(json.dumps(sorted(llm.tokenizer.get_vocab().items())).encode()).hexdigest()[:16]
    content = hashlib.sha256("\x1e".join(f"{i}\x1f{t}" for i, t in zip(ids, texts)).encode()).hexdigest()[:16]
    return {"model": spec.model, "weights_sha256": llm.weights_hash, "layers": list(spec.layers),
            "kind": spec.kind, "template": asdict(spec.template), "max_length": spec.max_length,
            "tokenizer_sha256": tok, "dtype": spec.dtype, "texts_sha256": content, "format_version": FORMAT_VERSION,
            "compute_dtype": dtype_name(llm.dtype),
            "attention_sink": llm.attention_sink, "width": llm.hidden_size}


def shard_states(spec: ExtractSpec, shard: tuple[int, int, int, int], token_ids: list[list[int]]):
    """Run the LLM over one shard's texts (store order): {layer: [region slots, width]} in the store dtype."""
    llm = cached_llm(spec.model, max(spec.layers), spec.compute_dtype)
    _, _, s0, s1 = shard
    starts = np.cumsum([0] + [len(t) for t in token_ids])
    dtype = DTYPES[spec.dtype]
    out = {layer: np.zeros((s1 - s0, llm.hidden_size), dtype=dtype) for layer in spec.layers}
    limit = float(np.finfo(dtype).max)
    cast = {np.float16: torch.float16, np.float32: torch.float32}[dtype]
    for idx, states, mask in llm.iter_hidden_states(token_ids, list(spec.layers), spec.batch_tokens,
                                                    progress=False):
        real = mask.bool()
        rows = np.concatenate([np.arange(starts[i], starts[i] + len(token_ids[i])) for i in idx])
        for layer in spec.layers:  # real tokens only, in store order; clamped and cast once, in torch
            out[layer][rows] = states[layer][real].float().clamp_(-limit, limit).to(cast).cpu().numpy()
    return out, int(starts[-1])


def _write_shard(path, shard, shard_index: int, states: dict, record: dict, owner: str) -> int:
    write_shard(Path(path), shard, shard_index, states, record, owner)
    return record["tokens"]


def timed_shard(spec: ExtractSpec, shard, token_ids: list[list[int]], run: str):
    """A shard's states and its record (tokens, compute seconds, which run computed it)."""
    t0 = time.time()
    states, tokens = shard_states(spec, shard, token_ids)
    return states, {"tokens": tokens, "seconds": round(time.time() - t0, 4), "run": run}


def compute_shard(path: str, spec: ExtractSpec, shard_index: int, shard: tuple[int, int, int, int],
                  token_ids: list[list[int]], owner: str) -> int:
    """Compute and write one shard (what a dask worker runs), unless its writer lost the lock meanwhile;
    returns its token count."""
    states, record = timed_shard(spec, shard, token_ids, owner)
    return _write_shard(path, shard, shard_index, states, record, owner)


def extract(ds: Prepared, spec: ExtractSpec, out: Path, force: bool = False, workers: int = 0,
            scheduler: str | None = None, progress: bool = True, dry_run: bool = False,
            rebuild_on_mismatch: bool = False) -> dict:
    """Build (or resume) the store for one data set and text kind. Returns a summary with timings.

    A store with another fingerprint is refused, unless `force` or `rebuild_on_mismatch` (what DVC uses:
    a changed parameter rebuilds, an interrupted run with the same parameters resumes). The compute dtype is
    resolved here, once, so every shard (and every dask worker) computes in the same one."""
    spec = replace(spec, compute_dtype=dtype_name(resolve_compute_dtype(spec.compute_dtype, default_device())))
    llm = cached_llm(spec.model, max(spec.layers), spec.compute_dtype)
    ids, texts = texts_of(ds, spec.kind, spec.template)
    token_ids, truncated = llm.tokenize(texts, spec.max_length)
    fp = fingerprint(spec, llm, ids, texts)
    tokens = sum(map(len, token_ids))
    itemsize = np.dtype(DTYPES[spec.dtype]).itemsize
    plan = Plan.build([len(t) for t in token_ids], spec.shard_tokens, spec.chunk_tokens)
    summary = {"store": str(out), "texts": len(ids), "tokens": tokens, "truncated": truncated,
               "layers": list(spec.layers), "max_length": spec.max_length, "compute_dtype": spec.compute_dtype,
               "estimated_bytes": plan.slots * llm.hidden_size * itemsize * len(spec.layers)}
    if dry_run:  # the cost only: no store, no lock, nothing on disk
        log.info(f"{_describe(summary)} (dry run: nothing written)")
        return summary
    check_writable(out, summary["estimated_bytes"] // 2)  # zstd keeps about half of float16 states
    with store_lock(out) as owner:
        writer = StoreWriter(out, fp, ids, token_ids, llm.hidden_size, spec.shard_tokens, spec.chunk_tokens, force,
                             rebuild_on_mismatch)
        pending = writer.pending_shards()
        ordered = [token_ids[i] for i in writer.plan.order]
        shard_tokens = {i: ordered[s[0]:s[1]] for i, s in enumerate(writer.plan.shards)}
        todo_tokens = sum(len(t) for i in pending for t in shard_tokens[i])
        log.info(f"{_describe(summary)}; {len(pending)}/{len(writer.plan.shards)} shards to compute "
                 f"({todo_tokens:,} tokens)")
        t0 = time.time()
        with tqdm(total=todo_tokens, unit="tok", unit_scale=True, desc=f"extract {spec.kind}",
                  disable=not progress) as bar:
            if pending and (workers or scheduler):
                _run_dask(str(out), spec, pending, writer.plan.shards, shard_tokens, workers, scheduler, bar, owner)
            else:
                _run_local(out, spec, pending, writer.plan.shards, shard_tokens, bar, owner)
        seconds = time.time() - t0
        # the store's statistics sum over every run that computed its shards (a resume adds, never replaces)
        writer.finish(build_history(out))
    summary.update({**writer.stats, "bytes_on_disk": store_bytes(out), "shards_computed_now": len(pending),
                    "seconds_now": round(seconds, 1)})
    return summary


def _describe(summary: dict) -> str:
    """One line on what a store holds or will hold."""
    return (f"{summary['store']}: {summary['texts']} texts, {summary['tokens']:,} tokens ({summary['truncated']} "
            f"truncated at {summary['max_length']}), layers {summary['layers']} computed in "
            f"{summary['compute_dtype']}, about {summary['estimated_bytes'] / 1e9:.2f} GB uncompressed")


def _run_local(out: Path, spec: ExtractSpec, pending: list[int], shards, shard_tokens: dict, bar, owner: str) -> None:
    """Compute the pending shards in this process: shard i + 1 is computed while a thread compresses and writes
    shard i."""
    with ThreadPoolExecutor(max_workers=1) as io:
        writing = None
        for i in pending:
            states, record = timed_shard(spec, shards[i], shard_tokens[i], owner)
            if writing is not None:
                bar.update(writing.result())
            writing = io.submit(_write_shard, out, shards[i], i, states, record, owner)
        if writing is not None:
            bar.update(writing.result())


def _run_dask(path, spec, pending, shards, shard_tokens, workers, scheduler, bar, owner: str) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        threads = max(1, torch.get_num_threads() // workers)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, env={"OMP_NUM_THREADS": str(threads)})
        client = Client(cluster)
    try:
        futures = [client.submit(compute_shard, path, spec, i, shards[i], shard_tokens[i], owner, pure=False)
                   for i in pending]
        for fut in as_completed(futures):
            bar.update(fut.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
