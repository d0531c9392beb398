"""What a training step costs: the LoRA adapter baseline (the LLM's blocks up to the U-layer forward and backward on
every batch) against the LMORT tuner trained from the activation stores, on the same batches of the same set.

    python bench/adapter_bench.py [--stores cache/default/stores] [--data scifact] [--steps 3]

Both use the configuration's recipe (params.yaml: batch size, hard negatives, bf16 autocast where native); the
adapter's rank and scale come from its `adapter:` section, its U-layer from `layer_selection`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.activations.store import open_stores
from pipeline.common.config import template_of
from pipeline.common.params import load_params, train_config, tuner_config
from pipeline.common.precision import autocast
from pipeline.common.tables import markdown_table
from pipeline.data.prepare import ensure_prepared
from pipeline.tuner.adapter import Adapter, AdapterConfig
from pipeline.tuner.adapter_train import adapter_step, tokenized
from pipeline.tuner.loop import epoch_batches
from pipeline.tuner.model import Tuner
from pipeline.tuner.train import prefetched, train_step
from pipeline.tuner.training_sets import TrainingSet


def seconds_per_step(step, batches) -> float:
    step(batches[0])  # warm-up: kernels, allocator
    t0 = time.time()
    for batch in batches[1:]:
        step(batch)
    return (time.time() - t0) / max(1, len(batches) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", type=Path, default=Path("cache/default/stores"))
    ap.add_argument("--geometry", type=Path, default=Path("cache/default/analysis/geometry.json"))
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    params = load_params(args.params)
    recipe = train_config(params)
    u, a = (int(x) for x in str(params["layer_selection"]).split(","))
    ds = ensure_prepared(args.data)
    queries, corpus = open_stores(args.stores, ds.name)
    ts = TrainingSet(ds, queries, corpus, ds.pairs("train").to_pylist())
    batches = epoch_batches([ts], recipe, 0)[: args.steps + 1]
    extract = params["extract"]
    knobs = {k: v for k, v in params["adapter"].items() if k != "max_steps"}
    cfg = AdapterConfig(model=params["model"], layer=u, query_max_length=extract["query_max_length"],
                        passage_max_length=extract["passage_max_length"],
                        template=asdict(template_of(params)), **knobs)
    adapter = Adapter(cfg)
    texts = tokenized(adapter, ds)
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=recipe.lr)
    amp = autocast("cpu", recipe.bf16)
    t_adapter = seconds_per_step(lambda b: adapter_step(adapter, opt, texts, b[1], amp, recipe.clip), batches)
    tcfg = tuner_config(params, "lmort", args.geometry, corpus.width, bool(corpus.fingerprint["attention_sink"]),
                        list(corpus.layers), (u, a))
    tuner = Tuner(tcfg)
    queries.load(tcfg.layers)
    corpus.load(tcfg.layers)
    topt = torch.optim.AdamW(tuner.parameters(), lr=recipe.lr)
    states = list(prefetched(batches, [ts], tcfg.layers, 0))
    order = iter(range(len(states)))
    t_tuner = seconds_per_step(lambda b: train_step(tuner, topt, states[next(order)], "cpu", amp, recipe.clip),
                               batches)
    rows = [{"variant": "adapter (LoRA, the LLM in the loop)", "trainable parameters": adapter.trainable_parameters(),
             "LLM blocks run": u, "s/step": round(t_adapter, 3), "ratio": round(t_adapter / t_tuner, 1)},
            {"variant": "lmort (from the stores)", "trainable parameters": tuner.num_parameters(), "LLM blocks run": 0,
             "s/step": round(t_tuner, 3), "ratio": 1.0}]
    print(f"\n{ds.name}, {args.steps} steps of batch {recipe.batch_size} + {recipe.negatives} hard negatives, "
          f"{torch.get_num_threads()} threads\n")
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
