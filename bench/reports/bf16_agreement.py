"""How far bfloat16-computed hidden states are from float32-computed ones, per stored layer.

Runs the frozen LLM over the first N passages of a data set twice (float32 weights and activations, then
bfloat16), and prints, per layer, the per-token cosine similarity of the two (median, 1st percentile, minimum;
position 0, the attention sink, is listed apart because pooling leaves it out) and the relative L2 error.

    python bench/reports/bf16_agreement.py [--model smollm2-135m] [--data scifact] [--docs 200] [--layers 0,2,30]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from pipeline.activations.extract import texts_of
from pipeline.activations.llm import FrozenLLM
from pipeline.common.config import Template
from pipeline.common.tables import markdown_table
from pipeline.data.prepare import ensure_prepared


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--layers", default="0,2,30")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    ds = ensure_prepared(args.data)
    _, texts = texts_of(ds, "corpus", Template())
    texts = texts[: args.docs]
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        llm = FrozenLLM(args.model, max_layer=max(layers), device="cpu", dtype=dtype)
        ids, _ = llm.tokenize(texts, args.max_length)
        per_layer: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for idx, states, mask in llm.iter_hidden_states(ids, layers, desc=str(dtype)):
            real = mask.bool()
            for layer in layers:
                for b in range(len(idx)):
                    per_layer[layer].append((idx[b], states[layer][b][real[b]].float()))
        runs[dtype] = {layer: [x for _, x in sorted(v, key=lambda t: t[0])] for layer, v in per_layer.items()}
    rows = []
    for layer in layers:
        f32, bf16 = runs[torch.float32][layer], runs[torch.bfloat16][layer]
        rest = torch.cat([F.cosine_similarity(a[1:], b[1:], dim=-1) for a, b in zip(f32, bf16)])
        sink = torch.stack([F.cosine_similarity(a[0], b[0], dim=0) for a, b in zip(f32, bf16)])
        rel = torch.cat([(a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12) for a, b in zip(f32, bf16)])
        rows.append({"layer": layer, "tokens": len(rest) + len(sink), "cosine median": round(float(rest.median()), 5),
                     "cosine 1st pct": round(float(rest.quantile(0.01)), 5), "cosine min": round(float(rest.min()), 5),
                     "position 0 cosine min": round(float(sink.min()), 5),
                     "relative L2 error median": round(float(rel.median()), 5)})
    print(f"\n{args.model}, first {len(texts)} {args.data} passages (max length {args.max_length}): bfloat16 against "
          f"float32 states, per token (positions 1.., and position 0 apart)\n")
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
