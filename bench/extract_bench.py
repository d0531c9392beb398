"""Stage-one benchmark: tokens/s of (a) a naive extraction, (b) the bare truncated forward, (c) `lmort extract`.

(a) the full causal LM with output_hidden_states=True, fixed-size batches in input order, states of the chosen
    layers saved with numpy; (b) FrozenLLM's length-bucketed forward of the truncated model, no I/O (the compute
    limit); (c) pipeline.activations.extract.extract end to end into a Zarr store. Also bytes on disk per token per
    layer and the peak RSS of (c) at one and four times the sample size (in fresh subprocesses).

(b) and (c) run once per compute dtype (float32, and bfloat16 where the CPU/GPU has native bf16), in the same
run. The table also gives the machine's measured float32 and bfloat16 matmul peaks and, from the model's config,
the fraction of the bf16 peak that the bare forward reaches (weight matmuls plus attention, per token).

    python bench/extract_bench.py [--model smollm2-135m] [--data scifact] [--docs 200] [--layers 0,2 0,2,30]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.activations.extract import ExtractSpec, cached_llm, extract, texts_of
from pipeline.activations.store import store_bytes
from pipeline.common.config import Template
from pipeline.common.precision import bf16_native
from pipeline.common.tables import markdown_table
from pipeline.data.prepare import ensure_prepared


def subset(ds, n):
    keep = list(ds.corpus)[:n]
    ds.corpus = {k: ds.corpus[k] for k in keep}
    return ds


def naive(model_name, texts, layers, max_length, out_dir, batch_size=8):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.activations.llm import resolve_model

    path, _ = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens = 0
    t0 = time.time()
    with torch.inference_mode():
        for b in range(0, len(texts), batch_size):
            enc = tok(texts[b : b + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            hs = model(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"].bool()
            for layer in layers:
                np.save(out_dir / f"b{b}_l{layer}.npy", hs[layer][m].numpy().astype(np.float16))
            tokens += int(m.sum())
    return tokens / (time.time() - t0)


def bare(model_name, texts, layers, max_length, compute_dtype):
    llm = cached_llm(model_name, max(layers), compute_dtype)
    ids, _ = llm.tokenize(texts, max_length)
    for _ in llm.iter_hidden_states(ids[:8], layers, progress=False):  # warm-up (oneDNN kernels)
        pass
    t0 = time.time()
    for _ in llm.iter_hidden_states(ids, layers, progress=False):
        pass
    return sum(map(len, ids)) / (time.time() - t0), ids


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Measured GFLOP/s of an n x n matmul in `dtype` on the CPU (best of `repeats`)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def flops_per_token(model_name: str, blocks: int, ids: list[list[int]]) -> float:
    """Forward FLOPs per token of `blocks` decoder blocks from the config: 2 x the weight matmuls' parameters,
    plus causal attention (scores and weighted sum) at each text's mean context of (length + 1) / 2."""
    from transformers import AutoConfig

    from pipeline.activations.llm import resolve_model

    c = AutoConfig.from_pretrained(resolve_model(model_name)[0])
    c = getattr(c, "text_config", c)
    d, heads = c.hidden_size, c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or d // heads
    kv = getattr(c, "num_key_value_heads", heads)
    weights = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * c.intermediate_size
    tokens = sum(map(len, ids))
    mean_context = sum(len(x) * (len(x) + 1) / 2 for x in ids) / tokens
    return blocks * (2 * weights + 4 * heads * head_dim * mean_context)


def rss_child(model, data, docs, layers, max_length):
    code = f"""
import tempfile
from pathlib import Path
from pipeline.activations.extract import ExtractSpec, extract
from pipeline.data.prepare import ensure_prepared
ds = ensure_prepared({data!r}); keep = list(ds.corpus)[:{docs}]; ds.corpus = {{k: ds.corpus[k] for k in keep}}
with tempfile.TemporaryDirectory() as d:
    extract(ds, ExtractSpec({model!r}, {tuple(layers)!r}, "corpus", {max_length}), Path(d) / "s.zarr", progress=False)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork and exec)
print(next(x.split()[1] for x in open("/proc/self/status") if x.startswith("VmHWM")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024  # kB -> MiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--layers", nargs="+", default=["0,2", "0,2,30"])
    ap.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                    help="Also time (a), the naive float32 extraction (slow: the whole model runs).")
    ap.add_argument("--compute-dtypes", nargs="+", default=None,
                    help="Default: float32, plus bfloat16 where the CPU has native bf16.")
    args = ap.parse_args()
    torch.manual_seed(0)
    dtypes = args.compute_dtypes or (["float32", "bfloat16"] if bf16_native("cpu") else ["float32"])
    peaks = {name: matmul_peak(getattr(torch, name)) for name in ("float32", "bfloat16")}
    rows = []
    for spec_layers in args.layers if args.speed else []:
        layers = [int(x) for x in spec_layers.split(",")]
        ds = subset(ensure_prepared(args.data), args.docs)
        _, texts = texts_of(ds, "corpus", Template())
        a = None
        if args.naive:
            with tempfile.TemporaryDirectory() as d:
                a = naive(args.model, texts, layers, args.max_length, Path(d))
        for compute_dtype in dtypes:
            b, ids = bare(args.model, texts, layers, args.max_length, compute_dtype)
            with tempfile.TemporaryDirectory() as d:
                s = extract(ds, ExtractSpec(args.model, tuple(layers), "corpus", args.max_length,
                                            compute_dtype=compute_dtype), Path(d) / "s.zarr", progress=False)
                per_token_layer = store_bytes(Path(d) / "s.zarr") / (s["tokens"] * len(layers))
            flops = flops_per_token(args.model, max(layers), ids)
            wall = s["tokens"] / s["seconds_now"]  # this run's wall clock, startup and writes included
            rows.append({"layers": spec_layers, "compute": compute_dtype, "tokens": s["tokens"],
                         "(a) naive f32 tok/s": round(a) if a else "",
                         "(b) bare forward tok/s": round(b), "(c) lmort extract tok/s": round(wall),
                         "c/b": round(wall / b, 2),
                         "(b) GFLOP/s": round(b * flops / 1e9),
                         "(b) % of bf16 peak": round(100 * b * flops / (peaks["bfloat16"] * 1e9), 1),
                         "bytes/token/layer": round(per_token_layer)})
        base = next(r for r in rows if r["layers"] == spec_layers and r["compute"] == "float32")
        for r in rows:
            if r["layers"] == spec_layers:
                r["(c) vs f32"] = round(r["(c) lmort extract tok/s"] / base["(c) lmort extract tok/s"], 2)
    print(f"\nmatmul peaks on this machine (4096 x 4096, {torch.get_num_threads()} threads): float32 "
          f"{peaks['float32']:,.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:,.0f} GFLOP/s")
    if rows:
        print(f"\n{args.model} on the first {args.docs} {args.data} passages, max length {args.max_length}, "
              f"{torch.get_num_threads()} threads\n")
        print(markdown_table(rows, list(rows[0])))
    if args.rss:
        layers = [int(x) for x in args.layers[0].split(",")]
        r1 = rss_child(args.model, args.data, args.docs, layers, args.max_length)
        r4 = rss_child(args.model, args.data, 4 * args.docs, layers, args.max_length)
        print(markdown_table([{"passages": args.docs, "peak RSS MiB": round(r1)},
                              {"passages": 4 * args.docs, "peak RSS MiB": round(r4)}], ["passages", "peak RSS MiB"]))
    print(json.dumps({"self_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
