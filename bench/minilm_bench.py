"""MiniLM (the all-MiniLM-L6-v2 baseline) on a corpus: seconds per text as the baselines stage encodes it today
(float32 with autograd on), in inference mode, and under bf16 autocast; and how far the vectors move. Where
onnxruntime and onnx are installed (not dependencies: `pip install onnxruntime onnx`), also the same float32 model
exported to ONNX and run by ONNX Runtime on the CPU.

    python bench/minilm_bench.py [--data cache/data/scifact] [--texts 640]

A sample of the corpus, seeded, in the stage's own order (by length, batches of 64). Every row runs `--repeats`
times, the rows interleaved (the first pass of a process pays for fresh memory and oneDNN's kernels, so a row run
first alone looks slower than it is); the table gives each row's fastest pass.
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


def onnx_encoder(folder: str):
    """The float32 model exported to ONNX (a temporary file) and an encoder of texts through ONNX Runtime, pooled and
    normalised as minilm_encode does; None without onnxruntime and onnx."""
    try:
        import onnxruntime
    except ImportError:
        return None
    import tempfile

    from transformers import AutoModel, AutoTokenizer

    class Encoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, use_safetensors=True).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tok(["an example", "a longer example text"], padding=True, return_tensors="pt")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:  # the session holds the model once built: the file can go
        path = f"{folder}/minilm.onnx"
        torch.onnx.export(Encoder(model), tuple(example[k] for k in names), path, input_names=names,
                          output_names=["hidden"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in names + ["hidden"]})
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        for idx in length_buckets([len(t) for t in texts], batch_size=64):
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="np")
            hidden = session.run(None, {k: enc[k].astype(np.int64) for k in names})[0]
            pooled = mean_pool(torch.from_numpy(hidden), torch.from_numpy(enc["attention_mask"]))
            out[idx] = F.normalize(pooled, dim=-1).numpy()
        return out

    return encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="cache/data/scifact")
    ap.add_argument("--texts", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ds = load_prepared(args.data)
    ids = random.Random(args.seed).sample(sorted(ds.corpus), min(args.texts, len(ds.corpus)))
    texts = [doc_text(ds.corpus[i]) for i in ids]
    minilm_encode(texts[:64], progress=False)  # load once: the file cache and oneDNN's kernels warm
    encodings = {"float32, autograd on (before)": lambda: with_autograd(texts),
                 "float32, inference mode": lambda: minilm_encode(texts, progress=False),
                 "bf16 autocast, inference mode": lambda: minilm_encode(texts, progress=False, bf16=True)}
    onnx = onnx_encoder(str(minilm_folder()))
    if onnx is not None:
        encodings["float32, ONNX Runtime (CPU)"] = lambda: onnx(texts)
    best, vectors = {name: float("inf") for name in encodings}, {}
    for _ in range(args.repeats):
        for name, run in encodings.items():
            t0 = time.time()
            vectors[name] = run()
            best[name] = min(best[name], time.time() - t0)
    reference = vectors["float32, autograd on (before)"]
    rows = []
    for name in encodings:
        cosine = (vectors[name] * reference).sum(1)
        rows.append({"encoding": name, "ms/text": round(1e3 * best[name] / len(texts), 2),
                     "speed-up": round(best["float32, autograd on (before)"] / best[name], 2),
                     "min cosine to before": round(float(cosine.min()), 5),
                     "max |difference|": f"{float(np.abs(vectors[name] - reference).max()):.1e}"})
    print(f"{len(texts)} texts of {ds.name}'s corpus, {torch.get_num_threads()} threads\n")
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
