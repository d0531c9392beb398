"""`lmort analyze`: alignment and uniformity of every layer on TRAINING pairs; picks the A- and U-layers."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..activations.extract import EXTRACT
from ..activations.llm import FrozenLLM, default_device, parameter_count
from ..common.atomic import atomic_file
from ..common.config import Template
from ..common.metrics import evaluate
from ..common.pooling import mean_pool
from ..common.precision import dtype_name, resolve_compute_dtype
from ..common.tables import markdown_table
from ..data.beir import Prepared
from .geometry import alignment_per_layer, choose_layers, uniformity_per_layer


@dataclass(frozen=True)
class AnalyzeConfig:
    """The `analyze:` knobs: the one source of their defaults (the params and `lmort analyze`'s options)."""

    max_pairs: int = 1000  # training pairs whose alignment and uniformity are measured (5,000 pick the same layers)
    seed: int = 0


ANALYZE = AnalyzeConfig()


def sample_pairs(datasets: list[Prepared], split: str, max_pairs: int, seed: int) -> list[tuple[str, str, str]]:
    """(dataset, query id, positive doc id) triples from the `split` pairs tables, seeded."""
    if split == "test":
        raise ValueError("layer analysis never reads a test split (DESIGN.md: no test split picks a layer)")
    pairs = []
    for ds in datasets:
        t = ds.pairs(split).to_pydict()
        pairs += [(ds.name, q, d) for q, pos in zip(t["query_id"], t["positive_ids"]) for d in pos]
    random.Random(seed).shuffle(pairs)
    return pairs[:max_pairs]


def pooled_all_layers(llm: FrozenLLM, texts: list[str], max_length: int, desc: str,
                      batch_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """[N, L+1, H] mean-pooled states of every layer (float32), and the number of truncated texts."""
    layers = list(range(llm.max_layer + 1))
    ids, truncated = llm.tokenize(texts, max_length)
    out = torch.empty(len(texts), len(layers), llm.hidden_size)
    for idx, states, mask in llm.iter_hidden_states(ids, layers, batch_tokens, desc=desc):
        for layer in layers:
            out[idx, layer] = mean_pool(states[layer], mask, llm.attention_sink).cpu()
    return out, truncated


def analyze(
    model: str, datasets: list[Prepared], out: Path, split: str = "train", max_pairs: int = ANALYZE.max_pairs,
    seed: int = ANALYZE.seed, template: Template = Template(), query_max_length: int = EXTRACT.query_max_length,
    passage_max_length: int = EXTRACT.passage_max_length, eval_dataset: Prepared | None = None,
    eval_split: str = "test", compute_dtype: str = EXTRACT.compute_dtype,
) -> dict:
    t0 = time.time()
    llm = FrozenLLM(model, dtype=resolve_compute_dtype(compute_dtype, default_device()))
    pairs = sample_pairs(datasets, split, max_pairs, seed)
    by_name = {d.name: d for d in datasets}
    qkeys = sorted({(n, q) for n, q, _ in pairs})
    dkeys = sorted({(n, d) for n, _, d in pairs})
    qtexts = [template.format_query(by_name[n].queries[q]) for n, q in qkeys]
    dtexts = [template.format_passage(**by_name[n].corpus[d]) for n, d in dkeys]
    pq, q_trunc = pooled_all_layers(llm, qtexts, query_max_length, "queries")
    pd, d_trunc = pooled_all_layers(llm, dtexts, passage_max_length, "passages")
    qrow = {k: i for i, k in enumerate(qkeys)}
    drow = {k: i for i, k in enumerate(dkeys)}
    qi = torch.tensor([qrow[(n, q)] for n, q, _ in pairs])
    di = torch.tensor([drow[(n, d)] for n, _, d in pairs])
    align = alignment_per_layer(pq[qi], pd[di])
    # uniformity over distinct texts of both kinds, at most 4,000 (seeded) to bound the pair count
    texts = torch.cat([pq, pd])
    keep = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:4000]
    unif = uniformity_per_layer(texts[keep])
    result = {
        "model": model, "attention_sink_dropped": llm.attention_sink, "num_layers": llm.num_layers,
        "llm_parameters": parameter_count(llm.path),
        "datasets": [d.name for d in datasets], "split": split, "pairs": len(pairs),
        "settings": {"max_pairs": max_pairs, "seed": seed, "template": template.__dict__,
                     "query_max_length": query_max_length, "passage_max_length": passage_max_length,
                     "compute_dtype": dtype_name(llm.dtype)},
        "truncated": {"queries": q_trunc, "passages": d_trunc, "of_queries": len(qtexts),
                      "of_passages": len(dtexts)},
        "alignment": align, "uniformity": unif, **choose_layers(align, unif),
    }
    if eval_dataset is not None:
        result["zero_shot_ndcg10"] = {"dataset": eval_dataset.name, "split": eval_split,
                                      "note": "reporting only; never used to choose a layer",
                                      "per_layer": raw_layer_ndcg(llm, eval_dataset, eval_split, template,
                                                                  query_max_length, passage_max_length)}
    result["wall_seconds"] = round(time.time() - t0, 1)
    write_analysis(result, Path(out))
    return result


def raw_layer_ndcg(llm: FrozenLLM, ds: Prepared, split: str, template: Template, qlen: int, plen: int):
    """nDCG@10 of each raw pooled layer (cosine, exact search) on an evaluation split: reporting only."""
    qids = list(ds.qrels[split])
    dids = list(ds.corpus)
    q, _ = pooled_all_layers(llm, [template.format_query(ds.queries[i]) for i in qids], qlen, "eval queries")
    d, _ = pooled_all_layers(llm, [template.format_passage(**ds.corpus[i]) for i in dids], plen, "eval corpus")
    scores = []
    for layer in range(q.shape[1]):
        s = F.normalize(q[:, layer], dim=-1) @ F.normalize(d[:, layer], dim=-1).T
        top = s.topk(min(100, len(dids)), dim=1)
        run = {qid: {dids[j]: float(v) for v, j in zip(top.values[i], top.indices[i])} for i, qid in enumerate(qids)}
        scores.append(evaluate(run, ds.qrels[split])["nDCG@10"])
    return scores


def layer_table(result: dict) -> str:
    rows = []
    for layer, (a, u) in enumerate(zip(result["alignment"], result["uniformity"])):
        mark = " ".join(x for x, ok in (("A", layer == result["a_layer"]), ("U", layer == result["u_layer"])) if ok)
        row = {"layer": layer, "alignment": a, "uniformity": u, "chosen": mark}
        if "zero_shot_ndcg10" in result:
            row["raw nDCG@10"] = result["zero_shot_ndcg10"]["per_layer"][layer]
        rows.append(row)
    cols = ["layer", "alignment", "uniformity", "chosen"] + (["raw nDCG@10"] if "zero_shot_ndcg10" in result else [])
    return markdown_table(rows, cols)


def plot_geometry(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(len(result["alignment"])))
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(layers, result["alignment"], "o-", color="tab:blue", label="alignment")
    ax1.set_xlabel("layer (0 = embeddings)")
    ax1.set_ylabel("alignment (lower = pairs closer)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(layers, result["uniformity"], "s-", color="tab:red", label="uniformity")
    ax2.set_ylabel("uniformity (lower = better spread)", color="tab:red")
    ax1.axvline(result["a_layer"], color="tab:blue", ls="--", alpha=0.6)
    ax2.axvline(result["u_layer"], color="tab:red", ls=":", alpha=0.6)
    ax1.set_title(f"{result['model']} on {'+'.join(result['datasets'])} {result['split']} "
                  f"(A-layer {result['a_layer']}, U-layer {result['u_layer']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_analysis(result: dict, out: Path) -> None:
    """geometry.json (no timings, so an identical rerun changes nothing downstream), timing.json, geometry.png
    and geometry.md in `out`, each written under a temporary name first."""
    out.mkdir(parents=True, exist_ok=True)
    stable = {k: v for k, v in result.items() if k != "wall_seconds"}  # what downstream stages depend on
    for name, write in (("geometry.json", lambda p: p.write_text(json.dumps(stable, indent=1))),
                        ("timing.json", lambda p: p.write_text(json.dumps({"wall_seconds": result["wall_seconds"]}))),
                        ("geometry.md", lambda p: p.write_text(layer_table(result) + "\n" + result["verdict"] + "\n")),
                        ("geometry.png", lambda p: plot_geometry(result, p))):
        atomic_file(out / name, write)
