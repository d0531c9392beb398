"""MiniLM (the all-MiniLM-L6-v2 baseline) on a corpus: seconds per text as the baselines stage encodes it today
(float32 with autograd on), in inference mode, and under bf16 autocast; and how far the vectors move.

    python bench/minilm_bench.py [--data cache/data/scifact] [--texts 640]

A sample of the corpus, seeded, in the stage's own order (by length, batches of 64); one run each, in turn.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.common.batching import length_buckets
from pipeline.common.pooling import mean_pool
from pipeline.common.tables import markdown_table
from pipeline.data.beir import load_prepared
from pipeline.data.bm25 import doc_text
from pipeline.retrieval.baselines import minilm_encode, minilm_folder


def with_autograd(texts: list[str]) -> np.ndarray:
    """The stage's encoding before this bench: float32, autograd recording every batch."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_folder())
    model = AutoModel.from_pretrained(minilm_folder(), use_safetensors=True).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for idx in length_buckets([len(t) for t in texts], batch_size=64):
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
        pooled = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
        out[idx] = F.normalize(pooled, dim=-1).detach().numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="cache/data/scifact")
    ap.add_argument("--texts", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = load_prepared(args.data)
    ids = random.Random(args.seed).sample(sorted(ds.corpus), min(args.texts, len(ds.corpus)))
    texts = [doc_text(ds.corpus[i]) for i in ids]
    minilm_encode(texts[:64], progress=False)  # load once: the file cache and oneDNN's kernels warm
    rows, reference = [], None
    for name, run in [("float32, autograd on (before)", lambda: with_autograd(texts)),
                      ("float32, inference mode", lambda: minilm_encode(texts, progress=False)),
                      ("bf16 autocast, inference mode", lambda: minilm_encode(texts, progress=False, bf16=True))]:
        t0 = time.time()
        vectors = run()
        seconds = time.time() - t0
        reference = vectors if reference is None else reference
        cosine = (vectors * reference).sum(1)
        rows.append({"encoding": name, "ms/text": round(1e3 * seconds / len(texts), 2),
                     "speed-up": round(rows[0]["ms/text"] / (1e3 * seconds / len(texts)), 2) if rows else 1.0,
                     "min cosine to before": round(float(cosine.min()), 5),
                     "max |difference|": f"{float(np.abs(vectors - reference).max()):.1e}"})
    print(f"{len(texts)} texts of {ds.name}'s corpus, {torch.get_num_threads()} threads\n")
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
