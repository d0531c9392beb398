"""One table across configurations: the same recipe run with different LLMs, and the adapter baseline.

Each configuration's artifacts stay where its own `dvc repro` wrote them (cache/<name>/: metrics.json, the tuners'
train.json, the stores' extract.json, the analysis' geometry.json); this module only reads them, so stage one is
paid once per model and a comparison never reruns anything. The adapter's runs are scored here with the same
ir-measures call as every other run.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..activations.store import ActivationStore
from ..common.metrics import evaluate, mean_or_none, read_trec_run
from ..common.tables import markdown_table
from ..data.prepare import ensure_prepared
from ..retrieval.runs import find_run
from .report import _json, layers_label


def stage_one(root: Path) -> dict:
    """Extraction over every store of a configuration: tokens, seconds, tokens/s and bytes on disk."""
    tokens = seconds = size = 0
    for f in sorted(Path(root).glob("stores/*/extract.json")):
        for s in json.loads(f.read_text()).values():
            tokens, seconds, size = tokens + s["tokens"], seconds + s["seconds"], size + s["bytes_on_disk"]
    return {"tokens": tokens, "seconds": seconds, "tokens/s": tokens / seconds if seconds else None,
            "GB on disk": size / 1e9}


def configuration_rows(name: str, root: Path, systems: list[str], sets: list[str]) -> list[dict]:
    """One row per system of one configuration: its nDCG@10 per set, their mean, and what it cost."""
    root = Path(root)
    metrics = _json(root / "metrics.json") or {}
    geometry = _json(root / "analysis" / "geometry.json") or {}
    store = next(iter(sorted(root.glob("stores/*/queries.zarr"))), None)
    model = ActivationStore(store).fingerprint["model"] if store else None
    one = stage_one(root)
    rows = []
    for system in systems:
        scores = [metrics.get(s, {}).get(system, {}).get("nDCG@10") for s in sets]
        if all(v is None for v in scores):
            continue
        train = _json(root / "tuners" / system / "train.json")
        tuner = (train or {}).get("tuner", {})
        row = {"configuration": name, "model": model, "LLM parameters": geometry.get("llm_parameters"),
               "layers": layers_label(tuner) if tuner else "",
               "trainable parameters": train["parameters"] if train else None,
               "dev nDCG@10": train["dev_ndcg@10"] if train else None,
               "system": system, **dict(zip(sets, scores)), "average": mean_or_none(scores),
               "train s": train["train_seconds"] if train else None,
               "s/step": round(train["train_seconds"] / train["steps"], 3) if train else None,
               "extraction tok/s": one["tokens/s"], "stores GB": one["GB on disk"]}
        rows.append(row)
    return rows


def trained_row(name: str, folder: Path, runs: Path, sets: list[str], split: str = "test") -> dict:
    """A row for one trained model outside a configuration's own runs (the adapter baseline, or a tuner trained to
    the same budget): its runs RUNS/<set>/<split>/<name>.trec scored on `split`, its trainable parameters, steps,
    seconds per step and dev score (from its train.json)."""
    summary = json.loads((Path(folder) / "train.json").read_text())
    scores = []
    for data in sets:
        ds = ensure_prepared(data)
        scores.append(evaluate(read_trec_run(find_run([runs], ds.name, split, name)), ds.qrels[split])["nDCG@10"])
    if "adapter" in summary:  # the adapter baseline
        cfg = summary["adapter"]
        model, layers = cfg["model"], f"LoRA r{cfg['rank']} on blocks 1-{cfg['layer']}, pool {cfg['layer']}"
        parameters = summary["trainable_parameters"]
    else:  # a tuner
        model, layers, parameters = None, layers_label(summary["tuner"]), summary["parameters"]
    return {"configuration": name, "model": model, "layers": layers, "system": f"{name} ({summary['steps']} steps)",
            **dict(zip(sets, scores)), "average": mean_or_none(scores), "train s": summary["train_seconds"],
            "s/step": round(summary["train_seconds"] / max(1, summary["steps"]), 3),
            "trainable parameters": parameters, "dev nDCG@10": summary["dev_ndcg@10"]}


def compare_table(rows: list[dict], sets: list[str]) -> str:
    columns = ["configuration", "model", "LLM parameters", "layers", "system", *sets, "average", "trainable parameters",
               "dev nDCG@10", "train s", "s/step", "extraction tok/s", "stores GB"]
    return markdown_table([{**r, "LLM parameters": f"{r['LLM parameters']:,}" if r.get("LLM parameters") else None}
                           for r in rows], columns)
