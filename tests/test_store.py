import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.activations.extract import ExtractSpec, extract, texts_of
from pipeline.activations.llm import FrozenLLM
from pipeline.activations.store import ActivationStore, StoreWriter, store_lock
from pipeline.common.errors import StoreError


def spec_for(model, **kw):
    base = ExtractSpec(model, (0, 2, 3), "corpus", 16, compute_dtype="float32", shard_tokens=48, chunk_tokens=8,
                       batch_tokens=64)
    return replace(base, **kw)


def read_all(path):
    s = ActivationStore(path)
    return s.ids, {layer: s.group[f"layer_{layer}"][:] for layer in s.layers}


def test_round_trip_equals_the_models_hidden_states(tiny_model, prepared, tmp_path):
    spec = spec_for(tiny_model)
    summary = extract(prepared, spec, tmp_path / "c.zarr", progress=False)
    assert summary["shards_computed"] > 2 and summary["texts"] == 40
    store = ActivationStore(tmp_path / "c.zarr")
    llm = FrozenLLM(tiny_model, device="cpu")
    ids, texts = texts_of(prepared, "corpus", spec.template)
    some = [ids[0], ids[7], ids[31]]
    batch, mask = store.batch(some, [0, 3])
    for b, i in enumerate(some):
        tok, _ = llm.tokenize([texts[ids.index(i)]], 16)
        ref, _ = llm.forward(tok, [0, 3])
        n = len(tok[0])
        assert store.token_ids(i) == tok[0] and int(mask[b].sum()) == n
        for layer in (0, 3):
            assert torch.allclose(batch[layer][b, :n], ref[layer][0, :n], atol=2e-3, rtol=1e-3)
            assert (batch[layer][b, n:] == 0).all()
    assert store.dask(2).shape[1] == 32
    assert store.group["layer_2"].chunks == (spec.chunk_tokens, 32)  # the layout asked for (streamed reads)
    store.load([0, 3])  # the in-memory gather (training's path) gives the same padded batch
    loaded, loaded_mask = store.batch(some, [0, 3])
    assert torch.equal(loaded_mask, mask)
    for layer in (0, 3):
        assert loaded[layer].dtype == torch.float32 and torch.equal(loaded[layer], batch[layer])


def test_a_bfloat16_batch_is_the_float32_batch_cast(tiny_model, prepared, tmp_path):
    """What a bf16-autocast tuner is fed: gathered in the stored float16 and cast once, equal to the float32
    batch cast to bfloat16, whether the store is streamed from Zarr or loaded into memory."""
    extract(prepared, spec_for(tiny_model), tmp_path / "c.zarr", progress=False)
    store = ActivationStore(tmp_path / "c.zarr")
    some = store.ids[::5]
    for loaded in (False, True):
        if loaded:
            store.load([0, 3])
        want, want_mask = store.batch(some, [0, 3])
        got, mask = store.batch(some, [0, 3], torch.bfloat16)
        assert torch.equal(mask, want_mask)
        for layer in (0, 3):
            assert got[layer].dtype == torch.bfloat16 and torch.equal(got[layer], want[layer].to(torch.bfloat16))


def test_fingerprint_mismatch_refused_and_force_rebuilds(tiny_model, prepared, tmp_path):
    extract(prepared, spec_for(tiny_model), tmp_path / "c.zarr", progress=False)
    with pytest.raises(StoreError, match=r"max_length: store has 16, asked 12"):
        extract(prepared, spec_for(tiny_model, max_length=12), tmp_path / "c.zarr", progress=False)
    with pytest.raises(StoreError, match="fingerprint differs"):
        ActivationStore(tmp_path / "c.zarr", fingerprint={"model": "other"})
    extract(prepared, spec_for(tiny_model, max_length=12), tmp_path / "c.zarr", progress=False, force=True)
    assert ActivationStore(tmp_path / "c.zarr").fingerprint["max_length"] == 12


def test_incomplete_store_refused(tiny_model, prepared, tmp_path):
    llm = FrozenLLM(tiny_model, device="cpu")
    ids, texts = texts_of(prepared, "corpus", spec_for(tiny_model).template)
    tok, _ = llm.tokenize(texts, 16)
    writer = StoreWriter(tmp_path / "c.zarr", {"layers": [0], "dtype": "float16"}, ids, tok, 32, 48, 8)
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(tmp_path / "c.zarr")
    with pytest.raises(StoreError, match="shards still missing"):
        writer.finish()


def test_second_writer_refused_and_a_dead_writers_lock_is_free(tiny_model, prepared, tmp_path):
    path = tmp_path / "c.zarr"
    with store_lock(path):
        with pytest.raises(StoreError, match="another writer holds the lock"):
            extract(prepared, spec_for(tiny_model), path, progress=False)
        assert not path.exists()  # refused before touching anything
    holder = subprocess.Popen([sys.executable, "-c", LOCK_AND_SLEEP, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(StoreError, match="another writer"):
        with store_lock(path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with store_lock(path):  # the kernel released the dead writer's lock
        pass


LOCK_AND_SLEEP = """
import sys, time
from pipeline.activations.store import store_lock
with store_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


KILLABLE = """
import sys, time
import pipeline.activations.extract as ex
from pipeline.data.beir import load_prepared
real = ex.write_shard
def slow(*a, **k):
    real(*a, **k)
    time.sleep(0.4)
ex.write_shard = slow
spec = ex.ExtractSpec(sys.argv[1], (0, 2, 3), "corpus", 16, shard_tokens=48, chunk_tokens=8, batch_tokens=64)
ex.extract(load_prepared(sys.argv[2]), spec, sys.argv[3], progress=False)
"""


def test_killed_run_resumes_to_an_identical_store(tiny_model, prepared, tmp_path):
    ref = tmp_path / "ref.zarr"
    extract(prepared, spec_for(tiny_model), ref, progress=False)
    target = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, tiny_model, str(prepared.folder), str(target)])
    deadline = time.time() + 120
    while time.time() < deadline and len(list((target / "_shards").glob("*.done"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((target / "_shards").glob("*.done")))
    assert 2 <= done < len(list((ref / "_shards").glob("*.done"))), "the kill should land mid-run"
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(target)
    summary = extract(prepared, spec_for(tiny_model), target, progress=False)  # the dead writer's lock is free
    shards = len(list((ref / "_shards").glob("*.done")))
    assert summary["shards_computed_now"] == shards - done
    # the statistics describe the whole store, both runs: every shard and every token, two runs
    assert summary["shards_computed"] == shards and summary["runs"] == 2
    assert summary["tokens_computed"] == summary["tokens"] and summary["seconds"] > 0
    ids_a, a = read_all(ref)
    ids_b, b = read_all(target)
    assert ids_a == ids_b
    for layer in a:
        np.testing.assert_array_equal(a[layer], b[layer])


def test_dask_two_workers_equal_single_process(tiny_model, prepared, tmp_path):
    extract(prepared, spec_for(tiny_model), tmp_path / "one.zarr", progress=False)
    extract(prepared, spec_for(tiny_model), tmp_path / "two.zarr", progress=False, workers=2)
    ids_a, a = read_all(tmp_path / "one.zarr")
    ids_b, b = read_all(tmp_path / "two.zarr")
    assert ids_a == ids_b
    for layer in a:
        np.testing.assert_array_equal(a[layer], b[layer])


def test_compute_dtype_is_in_the_fingerprint_and_a_mismatch_is_refused(tiny_model, prepared, tmp_path):
    """States computed in float32 and in bfloat16 never share a store (explicit bfloat16 runs on any CPU)."""
    summary = extract(prepared, spec_for(tiny_model, compute_dtype="auto"), tmp_path / "c.zarr", progress=False)
    assert summary["compute_dtype"] == "float32"  # auto, with native bf16 switched off (conftest)
    assert ActivationStore(tmp_path / "c.zarr").fingerprint["compute_dtype"] == "float32"
    with pytest.raises(StoreError, match=r"compute_dtype: store has 'float32', asked 'bfloat16'"):
        extract(prepared, spec_for(tiny_model, compute_dtype="bfloat16"), tmp_path / "c.zarr", progress=False)


def test_auto_falls_back_to_float32_without_native_bf16(monkeypatch):
    from pipeline.common.precision import autocast, resolve_compute_dtype

    monkeypatch.setenv("LMORT_BF16", "0")
    assert resolve_compute_dtype("auto", "cpu") == torch.float32
    assert resolve_compute_dtype("bfloat16", "cpu") == torch.bfloat16  # asked for explicitly: taken as asked
    with autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="compute dtype must be one of"):
        resolve_compute_dtype("float8", "cpu")


def test_bfloat16_extraction_round_trip(tiny_model, prepared, tmp_path, monkeypatch):
    """On a CPU with native bf16, auto computes in bfloat16, and the stored states stay within bfloat16's
    tolerance of the model's own float32 states."""
    from pipeline.common.precision import bf16_native

    monkeypatch.delenv("LMORT_BF16")
    if not bf16_native("cpu"):
        pytest.skip("this CPU has no native bfloat16 (AVX-512 BF16 or AMX): auto computes in float32 here")
    extract(prepared, spec_for(tiny_model, compute_dtype="auto"), tmp_path / "c.zarr", progress=False)
    store = ActivationStore(tmp_path / "c.zarr")
    assert store.fingerprint["compute_dtype"] == "bfloat16"
    llm = FrozenLLM(tiny_model, device="cpu", dtype=torch.float32)
    ids, texts = texts_of(prepared, "corpus", spec_for(tiny_model).template)
    batch, mask = store.batch(ids[:12], [0, 3])
    for b, i in enumerate(ids[:12]):
        tok, _ = llm.tokenize([texts[ids.index(i)]], 16)
        ref, _ = llm.forward(tok, [0, 3])
        n = len(tok[0])
        for layer in (0, 3):
            got, want = batch[layer][b, :n], ref[layer][0, :n]
            assert not torch.equal(got, want.half().float())  # really computed in another precision
            assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.99
            assert torch.allclose(got, want, atol=0.05 * float(want.abs().max()), rtol=2e-2)


def test_a_dry_run_writes_nothing(tiny_model, prepared, tmp_path):
    summary = extract(prepared, spec_for(tiny_model), tmp_path / "s" / "c.zarr", progress=False, dry_run=True)
    assert summary["estimated_bytes"] > 0 and summary["tokens"] > 0
    assert not (tmp_path / "s").exists()  # no skeleton, no lock: a reader never sees an "interrupted" store


def test_a_shard_writer_that_lost_its_lock_does_not_write(tiny_model, prepared, tmp_path):
    """What a dask worker checks before writing: its writer still holds the store's lock."""
    from pipeline.activations.store import check_owner, write_shard

    path = tmp_path / "c.zarr"
    with store_lock(path) as owner:
        check_owner(path, owner)  # held by this writer: fine
        with pytest.raises(StoreError, match="no longer holds"):
            check_owner(path, "another-writer")
    with pytest.raises(StoreError, match="no longer holds"):  # the writer is gone (its lock released)
        write_shard(path, (0, 0, 0, 0), 0, {}, {"tokens": 0}, owner)
    assert not (path / "_shards").exists()


def test_length_buckets_cover_every_text_once_longest_first_within_the_budget():
    from pipeline.common.batching import length_buckets

    lengths = [5, 300, 17, 17, 1, 64, 0, 256]
    batches = list(length_buckets(lengths, batch_tokens=512))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    assert all(max(lengths[i] for i in b) * len(b) <= 512 or len(b) == 1 for b in batches)
    assert [len(b) for b in length_buckets(lengths, batch_size=3)] == [3, 3, 2]
    with pytest.raises(ValueError):
        list(length_buckets(lengths))
