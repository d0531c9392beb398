"""Stage-two benchmark: training steps from the cache vs. the same steps with the frozen LLM in the loop.

Same batches (the first N of epoch 1), same tuner, same machine, one run. The LLM-in-the-loop path
tokenises each batch and runs the truncated LLM up to the deepest layer the tuner reads; a second row runs it
to a deeper layer (as a tuner reading that layer would need), with the tuner still fed the stored layers so
that only the LLM's cost changes.

    python bench/train_bench.py [--stores cache/default/stores] [--data scifact] [--steps 10] [--device cuda]

On a GPU both paths run there (the LLM in bf16, the tuner under bf16 autocast, as `lmort train` does).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipeline.activations.extract import texts_of
from pipeline.activations.llm import FrozenLLM, default_device
from pipeline.activations.store import open_stores
from pipeline.common.config import Template
from pipeline.common.params import load_params, train_config, tuner_config
from pipeline.common.precision import autocast, bf16_native, feed_dtype
from pipeline.common.tables import markdown_table
from pipeline.data.prepare import ensure_prepared
from pipeline.tuner.loop import epoch_batches
from pipeline.tuner.model import Tuner
from pipeline.tuner.train import layer_pair, load_within_budget, prefetched, train_step
from pipeline.tuner.training_sets import TrainingSet


class LLMInTheLoop:
    """Quacks like ActivationStore.batch, but runs the frozen LLM on the texts every time."""

    def __init__(self, llm: FrozenLLM, texts: dict[str, str], max_length: int, depth: int):
        self.llm, self.texts, self.max_length, self.depth = llm, texts, max_length, depth

    def batch(self, ids, layers):
        tok, _ = self.llm.tokenize([self.texts[i] for i in ids], self.max_length)
        states, mask = self.llm.forward(tok, sorted(set(layers) | {self.depth}))
        return {k: states[k].clone() for k in layers}, mask.bool()  # clone: out of inference mode for autograd


def time_steps(tuner, ts, batches, device: str, lr=3e-4, bf16: bool = True, prefetch: int = 0,
               feed: torch.dtype | None = None, clip: float = 1.0) -> float:
    """Seconds per step, reading each batch's states as `lmort train` does (with `prefetch` batches ahead, in
    the dtype `lmort train` feeds unless `feed` is given)."""
    tuner = tuner.to(device)
    opt = torch.optim.AdamW(tuner.parameters(), lr=lr)
    amp = autocast(device, bf16)
    feed = feed or feed_dtype(device, bf16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.time()
    for states in prefetched(batches, [ts], tuner.cfg.layers, prefetch, feed):
        train_step(tuner, opt, states, device, amp, clip)  # the step `lmort train` takes
    sync()
    return (time.time() - t0) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stores", type=Path, default=Path("cache/default/stores"))
    ap.add_argument("--geometry", type=Path, default=Path("cache/default/analysis/geometry.json"))
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--variant", default="lmort")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--deep", type=int, default=None, help="Also time the LLM run to this layer [last].")
    ap.add_argument("--device", default=default_device())
    ap.add_argument("--loop", action=argparse.BooleanOptionalAction, default=True,
                    help="Also time the same steps with the LLM in the loop.")
    ap.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                    help="Also time the streamed path: stores read from Zarr each step, prefetched.")
    ap.add_argument("--profile", type=int, default=0,
                    help="Also profile this many steps of the path `lmort train` takes (torch.profiler's table).")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="Override a parameter, e.g. --set tuner.width=null (the paper-size tuner).")
    args = ap.parse_args()
    params = load_params(args.params, tuple(args.overrides))
    ds = ensure_prepared(args.data)
    queries, corpus = open_stores(args.stores, ds.name)
    # the (U, A) `lmort train` uses: the configuration's layer_selection, read as the train stage reads it
    dev_pick = args.geometry.parent.parent / "sweep" / "dev-pick.json"
    pair = layer_pair(str(params.get("layer_selection", "geometry")), dev_pick)
    cfg = tuner_config(params, args.variant, args.geometry, corpus.width, bool(corpus.fingerprint["attention_sink"]),
                       pair=pair)
    tcfg = train_config(params)
    cached = TrainingSet(ds, queries, corpus, ds.pairs("train").to_pylist())
    streamed = TrainingSet(ds, *open_stores(args.stores, ds.name), ds.pairs("train").to_pylist())  # never loaded
    # what `lmort train` streams when only the corpus is over `train.memory_gb`: its budget rule loads the
    # smallest stores first, so the queries sit in memory and the corpus is read from Zarr
    q_loaded, c_streamed = open_stores(args.stores, ds.name)
    corpus_streamed = TrainingSet(ds, q_loaded, c_streamed, ds.pairs("train").to_pylist())
    queries.load(cfg.layers)
    corpus.load(cfg.layers)
    batches = epoch_batches([cached], tcfg, 0)[: args.steps]
    steps_per_epoch = len(epoch_batches([cached], tcfg, 0))
    native = bf16_native(args.device)
    # float32; bf16 autocast fed float32 states (the path before the bf16 feed); bf16 autocast fed bfloat16 states
    # (what `lmort train` does where bf16 is native): the same batches from the same stores
    settings = [(False, torch.float32, "float32")]
    if native:
        settings += [(True, torch.float32, "bf16 autocast, float32 states"),
                     (True, torch.bfloat16, "bf16 autocast, bfloat16 states")]
    rows = []
    for bf16, feed, label in settings:
        torch.manual_seed(0)
        time_steps(Tuner(cfg), cached, batches[:2], args.device, bf16=bf16, feed=feed)  # warm-up (kernels, allocator)
        torch.manual_seed(0)
        t = time_steps(Tuner(cfg), cached, batches, args.device, bf16=bf16, prefetch=tcfg.prefetch, feed=feed)
        rows.append({"path": f"from the cache (stores in host memory), {label}",
                     "LLM blocks run": 0, "s/step": round(t, 3), "epoch s": round(t * steps_per_epoch, 1),
                     "ratio": 1.0})
    t_cache = rows[-1]["s/step"]  # the path `lmort train` takes on this device
    if args.stream:  # what `lmort train` does with stores over its memory budget
        budget_gb = (q_loaded.nbytes(cfg.layers) + c_streamed.nbytes(cfg.layers) / 2) / 1e9
        assert load_within_budget([corpus_streamed], cfg.layers, budget_gb, "cpu") == [str(c_streamed.path)]
        every = "every store streamed from Zarr"
        stream_rows = [(streamed, 0, every), (streamed, tcfg.prefetch, every),
                       (corpus_streamed, tcfg.prefetch, "corpus streamed from Zarr, queries in memory")]
        for ts, depth, label in stream_rows:
            torch.manual_seed(0)
            t = time_steps(Tuner(cfg), ts, batches, args.device, bf16=native, prefetch=depth)
            rows.append({"path": f"{label}, prefetch {depth}", "LLM blocks run": 0, "s/step": round(t, 3),
                         "epoch s": round(t * steps_per_epoch, 1), "ratio": 1.0})
    if args.device != "cpu":  # what `lmort train` does on a GPU: the stored layers moved there once
        queries.load(cfg.layers, args.device)
        corpus.load(cfg.layers, args.device)
        torch.manual_seed(0)
        t_cache = time_steps(Tuner(cfg), cached, batches, args.device)
        rows.append({"path": f"from the cache (stores in {args.device} memory)", "LLM blocks run": 0,
                     "s/step": round(t_cache, 3), "epoch s": round(t_cache * steps_per_epoch, 1), "ratio": 1.0})
    model = queries.fingerprint["model"]
    tpl = Template(**queries.fingerprint["template"])
    qids, qtexts = texts_of(ds, "queries", tpl)
    dids, dtexts = texts_of(ds, "corpus", tpl)
    g = json.loads(args.geometry.read_text())
    depths = sorted({max(cfg.layers), args.deep if args.deep is not None else g["num_layers"]}) if args.loop else []
    for depth in depths:
        llm = FrozenLLM(model, max_layer=depth, device=args.device)
        loop = TrainingSet(ds, LLMInTheLoop(llm, dict(zip(qids, qtexts)), queries.fingerprint["max_length"], depth),
                           LLMInTheLoop(llm, dict(zip(dids, dtexts)), corpus.fingerprint["max_length"], depth))
        torch.manual_seed(0)
        t = time_steps(Tuner(cfg), loop, batches, args.device)
        rows.append({"path": f"LLM in the loop, up to layer {depth}", "LLM blocks run": depth, "s/step": round(t, 3),
                     "epoch s": round(t * steps_per_epoch, 1), "ratio": round(t / t_cache, 1)})
    for row in rows:  # against the path `lmort train` takes on this device (the last in-memory row)
        row["ratio"] = round(row["s/step"] / t_cache, 2)
    print(f"\n{args.variant} tuner ({Tuner(cfg).num_parameters():,} parameters, layers {cfg.layers}) on {ds.name}, "
          f"{len(batches)} steps of batch {tcfg.batch_size} + {tcfg.negatives} hard negatives, "
          f"{torch.get_num_threads()} threads, device {args.device}; epoch = {steps_per_epoch} steps\n")
    print(markdown_table(rows, list(rows[0])))
    if args.stream:
        all_share, corpus_share = (t_cache / rows[len(settings) + i]["s/step"] for i in (1, 2))
        print(f"\nstreamed (prefetch {tcfg.prefetch}) against in memory: {corpus_share:.0%} of the in-memory "
              "steps/s with the corpus streamed (`lmort train` when only the corpus is over its budget), "
              f"{all_share:.0%} with every store streamed")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        bf16 = native if args.device == "cpu" else True
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            time_steps(Tuner(cfg), cached, batches[: args.profile], args.device, bf16=bf16)
        print(f"\nwhere {args.profile} steps' CPU time goes (torch.profiler, by self time):\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if len(settings) == 3:
        print(f"\nbf16 against float32, from the cache: {rows[0]['s/step'] / rows[2]['s/step']:.2f}x faster "
              f"(bf16 autocast with float32 states: {rows[0]['s/step'] / rows[1]['s/step']:.2f}x)")


if __name__ == "__main__":
    main()
