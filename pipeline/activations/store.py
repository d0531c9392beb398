"""ActivationStore: ragged hidden states of chosen layers in one chunked Zarr v3 store.

Layout (one store per model, data set, text kind, layers, template, max length):

    zarr.json            attrs: fingerprint, ids (store order), plan, complete
    starts   int64 [n]   first token slot of each text
    lengths  int32 [n]   tokens of each text
    token_ids int32 [slots]
    layer_<l> float16 [slots, width], chunks of `chunk_tokens` rows
    _shards/<i>.done     a shard's regions are fully written
    ../.<store>.lock     flock held by the one writer

Texts are stored longest first and grouped into shards; each shard owns whole chunks (its region starts on
a chunk boundary), so shards are written independently, by one process or by many dask workers, and a
killed run recomputes only the shards without a `.done` marker. `complete` is set last; readers refuse a
store without it. This module knows nothing about models or training.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

from ..common.atomic import atomic_dir, atomic_file
from ..common.errors import StoreError

SHARD_TOKENS = 32768  # tokens per shard: one task of the extraction (a dask worker's unit), resumable on its own
# rows (tokens) per Zarr chunk of a layer: a streamed training batch decodes every chunk its texts touch, so smaller
# chunks decode less (bench/train_bench.py: 256 rows streamed at 89% of the in-memory steps/s, 1,024 rows at
# 76-88%) for about 5% more disk (the default's stores)
CHUNK_TOKENS = 256

FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}  # numpy/zarr have no bfloat16


@dataclass
class Plan:
    """Where every text and every shard lives in the token axis; fixed before any state is computed."""

    order: list[int]  # store row -> index into the caller's text list
    lengths: list[int]  # per store row
    starts: list[int]  # per store row
    shards: list[tuple[int, int, int, int]]  # (first row, end row, first slot, end slot)
    slots: int

    @classmethod
    def build(cls, lengths: list[int], shard_tokens: int, chunk_tokens: int) -> Plan:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        starts, shards, slot, row = [], [], 0, 0
        while row < len(order):
            first_row, first_slot = row, slot
            while row < len(order) and (row == first_row or slot - first_slot + lengths[order[row]] <= shard_tokens):
                starts.append(slot)
                slot += lengths[order[row]]
                row += 1
            slot = -(-slot // chunk_tokens) * chunk_tokens  # next shard starts on a chunk boundary
            shards.append((first_row, row, first_slot, slot))
        return cls(order, [lengths[i] for i in order], starts, shards, slot)


def describe_difference(old: dict, new: dict, labels: tuple[str, str] = ("store has", "asked")) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: {labels[0]} {old.get(k)!r}, {labels[1]} {new.get(k)!r}"
                     for k in keys if old.get(k) != new.get(k))


# What every store a tuner reads must share: the same model, weights, layers, text template, dtypes. (Kind, length
# and texts differ between a corpus store and a queries store by design.)
SHARED_FIELDS = ("model", "weights_sha256", "tokenizer_sha256", "layers", "template", "dtype", "compute_dtype",
                 "attention_sink", "width", "format_version")


def shared_fingerprint(fingerprint: dict) -> dict:
    return {k: fingerprint.get(k) for k in SHARED_FIELDS}


def check_compatible(stores: list[ActivationStore], reference: dict | None = None, what: str = "") -> dict:
    """Refuse stores that were not built alike (another model, weights, layers, template or dtype), or that differ
    from `reference` (the shared fingerprint a tuner was trained on). Returns the shared fingerprint."""
    base = reference if reference is not None else shared_fingerprint(stores[0].fingerprint)
    for store in stores:
        mine = shared_fingerprint(store.fingerprint)
        if mine != base:
            other = what or str(stores[0].path)
            raise StoreError(f"{store.path} was not built like {other}: "
                             f"{describe_difference(base, mine, ('expected', 'this store has'))}")
    return base


class ActivationStore:
    """Opens a store for reading. Refuses one that is incomplete or has another fingerprint."""

    def __init__(self, path: Path, fingerprint: dict | None = None):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"{self.path}: no activation store here; run `lmort extract`")
        self.group = zarr.open_group(str(self.path), mode="r")
        attrs = self.group.attrs.asdict()
        if not attrs.get("complete"):
            raise StoreError(f"{self.path}: store is incomplete (an extraction was interrupted); "
                             "rerun `lmort extract` to resume it")
        self.fingerprint = attrs["fingerprint"]
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise StoreError(f"{self.path}: fingerprint differs: {describe_difference(self.fingerprint, fingerprint)}")
        self.ids: list[str] = attrs["ids"]
        self.row = {i: r for r, i in enumerate(self.ids)}
        self.layers: list[int] = self.fingerprint["layers"]
        self.starts = self.group["starts"][:]
        self.lengths = self.group["lengths"][:]
        self.width = int(self.group[f"layer_{self.layers[0]}"].shape[1])
        self._memory: dict[int, np.ndarray | torch.Tensor] = {}

    def identity(self) -> dict:
        """What a reader of this store depends on: its fingerprint and its build history (which changes whenever
        the store is rebuilt), but not its path: `lmort identify` records it for DVC."""
        return {"fingerprint": self.fingerprint, "texts": len(self.ids), "history": build_history(self.path)}

    def dask(self, layer: int):
        """The flat [slots, width] array of one layer as a dask array (chunks as stored)."""
        import dask.array as da

        return da.from_zarr(self.group[f"layer_{layer}"])

    def load(self, layers: list[int], device: str | torch.device | None = None) -> None:
        """Read whole layers into memory once (training reads random texts; chunk reads would repeat).
        With a CUDA `device` they stay in GPU memory in the store dtype, so a batch is one gather there
        instead of a host copy per step (on a GPU that copy costs more than the tuner's step)."""
        for layer in layers:
            if layer not in self._memory:
                self._memory[layer] = self.group[f"layer_{layer}"][:]
            if device is not None and torch.device(device).type != "cpu":
                self._memory[layer] = torch.as_tensor(self._memory[layer]).to(device)

    def release(self, keep: list[int]) -> None:
        """Forget loaded layers other than `keep`: a layer sweep walks through many layers without holding all."""
        for layer in [layer for layer in self._memory if layer not in keep]:
            del self._memory[layer]

    def _array(self, layer: int):
        if layer not in self.layers:
            raise StoreError(f"{self.path}: layer {layer} not stored (has {self.layers})")
        return self._memory.get(layer, self.group[f"layer_{layer}"])

    def token_ids(self, text_id: str) -> list[int]:
        r = self.row[text_id]
        s = int(self.starts[r])
        return self.group["token_ids"][s : s + int(self.lengths[r])].tolist()

    def batch(self, ids: list[str], layers: list[int],
              dtype: torch.dtype = torch.float32) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Right-padded batches {layer: [B, T, width]} of `dtype` and the [B, T] bool mask, on the device the
        layers were loaded to (CPU unless `load` was given a GPU). A bfloat16 batch is gathered in the stored
        float16 and cast once: no float32 copy (half the bytes moved; what a bf16-autocast tuner reads)."""
        rows = np.array([self.row[i] for i in ids])
        lengths = self.lengths[rows].astype(np.int64)
        positions = np.arange(int(lengths.max()))
        real = positions[None, :] < lengths[:, None]
        slots = self.starts[rows].astype(np.int64)[:, None] + np.minimum(positions[None, :], lengths[:, None] - 1)
        mask = torch.from_numpy(real)
        gather = np.float32 if dtype == torch.float32 else np.float16  # numpy has no bfloat16
        out = {}
        for layer in layers:
            arr = self._array(layer)
            if isinstance(arr, torch.Tensor):  # resident on a GPU: one gather there; pads (copies) become zeros
                mask = mask.to(arr.device)
                out[layer] = arr[torch.from_numpy(slots).to(arr.device)].to(dtype) * mask[..., None]
                continue
            x = np.zeros((*slots.shape, self.width), dtype=gather)
            if isinstance(arr, np.ndarray):  # in host memory: one pass, real tokens only, cast on assignment
                x[real] = arr[slots[real]]
            else:  # streamed: one read of the batch's token rows (zarr fetches and decodes each chunk once)
                needed, where = np.unique(slots[real], return_inverse=True)
                x[real] = arr.oindex[needed, :][where.ravel()]
            out[layer] = torch.from_numpy(x).to(dtype)
        return out, mask

    def nbytes(self, layers: list[int]) -> int:
        """Bytes the given layers take in memory once loaded (what `load` would cost)."""
        arrays = [self.group[f"layer_{layer}"] for layer in layers]
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays)


# ------------------------------------------------------------------ writing (the cache runner's side)


class StoreWriter:
    """Creates or reopens a store for writing; one writer at a time (a lock file)."""

    def __init__(self, path: Path, fingerprint: dict, ids: list[str], token_ids: list[list[int]], width: int,
                 shard_tokens: int = SHARD_TOKENS, chunk_tokens: int = CHUNK_TOKENS, force: bool = False,
                 rebuild_on_mismatch: bool = False):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.plan = Plan.build([len(t) for t in token_ids], shard_tokens, chunk_tokens)
        self.ids = [ids[i] for i in self.plan.order]
        plan_attrs = {"shards": len(self.plan.shards), "slots": self.plan.slots, "shard_tokens": shard_tokens,
                      "chunk_tokens": chunk_tokens}
        if (self.path / "zarr.json").exists():
            attrs = zarr.open_group(str(self.path), mode="r").attrs.asdict()
            mismatch = attrs.get("fingerprint") != fingerprint or attrs.get("ids") != self.ids or \
                attrs.get("plan") != plan_attrs
            if force or (rebuild_on_mismatch and mismatch):
                shutil.rmtree(self.path)
            elif attrs.get("fingerprint") != fingerprint:
                raise StoreError(f"{self.path}: a store with another fingerprint exists "
                                 f"({describe_difference(attrs.get('fingerprint', {}), fingerprint)}); "
                                 "use --force to rebuild it")
            elif attrs.get("plan") != plan_attrs or attrs.get("ids") != self.ids:
                raise StoreError(f"{self.path}: store was laid out for other texts or shard sizes; use --force")
        if not (self.path / "zarr.json").exists():
            self._create(token_ids, width, plan_attrs)

    def _create(self, token_ids: list[list[int]], width: int, plan_attrs: dict) -> None:
        p = self.plan
        chunk = plan_attrs["chunk_tokens"]

        def write(tmp: Path) -> None:
            g = zarr.open_group(str(tmp), mode="w")
            g.create_array("starts", data=np.asarray(p.starts, dtype=np.int64))
            g.create_array("lengths", data=np.asarray(p.lengths, dtype=np.int32))
            flat = np.zeros(p.slots, dtype=np.int32)
            for row, idx in enumerate(p.order):
                flat[p.starts[row] : p.starts[row] + p.lengths[row]] = token_ids[idx]
            g.create_array("token_ids", data=flat, chunks=(max(chunk * 16, 1),))
            for layer in self.fingerprint["layers"]:
                g.create_array(f"layer_{layer}", shape=(p.slots, width), chunks=(chunk, width),
                               dtype=DTYPES[self.fingerprint["dtype"]], compressors=ZstdCodec(level=3), fill_value=0)
            g.attrs.update({"fingerprint": self.fingerprint, "ids": self.ids, "plan": plan_attrs, "complete": False,
                            "format_version": FORMAT_VERSION})
            (tmp / "_shards").mkdir()

        atomic_dir(self.path, write)

    @property
    def complete(self) -> bool:
        return bool(zarr.open_group(str(self.path), mode="r").attrs.get("complete"))

    def pending_shards(self) -> list[int]:
        return [i for i in range(len(self.plan.shards)) if not (self.path / "_shards" / f"{i}.done").exists()]

    def finish(self, stats: dict | None = None) -> None:
        """Mark the store complete (last), recording how it was built."""
        missing = self.pending_shards()
        if missing:
            raise StoreError(f"{self.path}: {len(missing)} shards still missing; not marking complete")
        if not self.complete:  # never rewrite a finished store (its files may be links into the DVC cache)
            zarr.open_group(str(self.path), mode="r+").attrs.update({"stats": stats or {}, "complete": True})

    @property
    def stats(self) -> dict:
        return zarr.open_group(str(self.path), mode="r").attrs.get("stats", {})


@contextmanager
def store_lock(path: Path):
    """One writer per store: an exclusive flock on `.<store>.lock` beside it, taken before the writer looks at
    or creates the store. The kernel releases it when the holder dies, so a killed run never leaves it stale.
    Yields the holder's token (also written into the lock file): shard writers check it before each write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{path}: another writer holds the lock {lock_path}") from None
        token = f"{os.getpid()}-{time.time_ns()}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, token.encode(), 0)
        yield token
    finally:
        os.close(fd)  # closing releases the lock


def check_owner(path: Path, token: str) -> None:
    """Refuse to write a shard unless the writer that handed it out (`token`) still holds the store's lock: a
    dask worker whose main process was killed stops instead of writing into a store someone else may own."""
    lock_path = Path(path).with_name(f".{Path(path).name}.lock")
    fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            held = False  # nobody holds it: the writer is gone
        except BlockingIOError:
            held = True
        holder = os.pread(fd, 64, 0).decode(errors="replace")
    finally:
        os.close(fd)
    if not held or holder != token:
        raise StoreError(f"{path}: the writer {token} no longer holds the lock; this shard is not written")


def write_shard(path: Path, shard: tuple[int, int, int, int], shard_index: int,
                states: dict[int, np.ndarray], record: dict | None = None, owner: str | None = None) -> None:
    """Write one shard's regions ({layer: [slots, width]} covering its whole region) and mark it done; the
    marker keeps `record` (tokens, seconds, run), so a store's statistics sum over every run that built it."""
    if owner is not None:
        check_owner(path, owner)
    g = zarr.open_group(str(path), mode="r+")
    _, _, s0, s1 = shard
    for layer, arr in states.items():
        g[f"layer_{layer}"][s0:s1] = arr
    marker = Path(path) / "_shards" / f"{shard_index}.done"
    atomic_file(marker, lambda tmp: tmp.write_text(json.dumps(record or {})))


def build_history(path: Path) -> dict:
    """Tokens, compute seconds and runs summed over every shard marker: the whole history of a store, however
    many resumes it took (markers from before records existed count as shards of unknown cost)."""
    tokens = seconds = 0.0
    runs, shards = set(), 0
    for marker in (Path(path) / "_shards").glob("*.done"):
        shards += 1
        try:
            r = json.loads(marker.read_text() or "{}")
        except json.JSONDecodeError:
            r = {}
        r = r if isinstance(r, dict) else {}
        tokens += r.get("tokens", 0)
        seconds += r.get("seconds", 0.0)
        if "run" in r:
            runs.add(r["run"])
    return {"seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "shards_computed": shards, "runs": len(runs), "tokens_computed": int(tokens)}


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def open_stores(stores: Path, dataset: str) -> tuple[ActivationStore, ActivationStore]:
    """(queries, corpus) stores of one data set under a stores folder written by `lmort extract`."""
    root = Path(stores) / Path(dataset).name
    return ActivationStore(root / "queries.zarr"), ActivationStore(root / "corpus.zarr")
