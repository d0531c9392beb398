"""One table across configurations (issue 26): the same recipe run with different LLMs, and the adapter baseline.

Each configuration's artifacts stay where its own `dvc repro` wrote them (cache/<name>/: metrics.json, the tuners'
train.json, the stores' extract.json, the analysis' geometry.json); this module only reads them, so stage one is
paid once per model and a comparison never reruns anything. The adapter's runs are scored here with the same
ir-measures call as every other run.
"""

from __future__ import annotations

import json
from pathlib import Path

from .metrics import evaluate, mean_or_none, read_trec_run
from .prepare import ensure_prepared
from .runs import find_run
from .store import ActivationStore
from .tables import markdown_table


def _json(path: Path) -> dict | None:
    return json.loads(Path(path).read_text()) if Path(path).exists() else None


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
               "(U, A)": f"({tuner['stream_layer']}, {tuner['cross_layer']})" if tuner else "",
               "system": system, **dict(zip(sets, scores)), "average": mean_or_none(scores),
               "train s": train["train_seconds"] if train else None,
               "s/step": round(train["train_seconds"] / train["steps"], 3) if train else None,
               "extraction tok/s": one["tokens/s"], "stores GB": one["GB on disk"]}
        rows.append(row)
    return rows


def adapter_row(adapter: Path, runs: Path, sets: list[str], split: str = "test") -> dict:
    """The adapter baseline's row: its runs scored on `split`, its trainable parameters and seconds per step."""
    summary = json.loads((Path(adapter) / "train.json").read_text())
    scores = []
    for data in sets:
        ds = ensure_prepared(data)
        scores.append(evaluate(read_trec_run(find_run([runs], ds.name, split, "adapter")), ds.qrels[split])["nDCG@10"])
    cfg = summary["adapter"]
    return {"configuration": "adapter", "model": cfg["model"], "(U, A)": f"({cfg['layer']}, -)",
            "system": f"adapter (LoRA r{cfg['rank']}, {summary['steps']} steps)", **dict(zip(sets, scores)),
            "average": mean_or_none(scores), "train s": summary["train_seconds"],
            "s/step": summary["seconds_per_step"], "trainable parameters": summary["trainable_parameters"],
            "dev nDCG@10": summary["dev_ndcg@10"]}


def compare_table(rows: list[dict], sets: list[str]) -> str:
    columns = ["configuration", "model", "LLM parameters", "(U, A)", "system", *sets, "average", "train s", "s/step",
               "extraction tok/s", "stores GB"]
    if any("trainable parameters" in r for r in rows):
        columns += ["trainable parameters", "dev nDCG@10"]
    return markdown_table([{**r, "LLM parameters": f"{r['LLM parameters']:,}" if r.get("LLM parameters") else None}
                           for r in rows], columns)
