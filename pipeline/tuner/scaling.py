"""The data-scaling curve: the same recipe trained on nested samples of the training queries, from the same stores
(stage one is never rerun), scored on dev (model selection) and zero-shot test sets (reported, never chosen on).

Each point is its own folder with a `point.json` written last, so a killed sweep resumes at the next point, and
points trained elsewhere (a GPU machine) can be dropped in beside the others."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..common.atomic import atomic_file
from ..common.config import TrainConfig, TunerConfig
from ..common.metrics import evaluate, mean_or_none
from .loop import epoch_batches, split_ndcg
from .model import Tuner
from .train import data_setup, numeric_settings, store_encoder, train
from .training_sets import TrainingSet, sample_queries


def point_name(variant: str, size: str | None, queries: int | None) -> str:
    return f"{variant}-{size or 'fixed'}-{queries or 'all'}"



def recipe_for(sets: list[TrainingSet], cfg: TrainConfig, queries: int | None, min_steps: int,
               evaluations: int = 3) -> TrainConfig:
    """One rule for every point: at least one pass over the sample and at least `min_steps` steps (small samples
    repeat for several epochs), dev scored about `evaluations` times, the best dev epoch kept."""
    sampled = replace(cfg, max_queries=queries, max_steps_per_epoch=None)
    per_epoch = max(1, len(epoch_batches(sample_queries(sets, queries, cfg.seed), sampled, 0)))
    epochs = max(1, math.ceil(min_steps / per_epoch))
    return replace(sampled, epochs=epochs, dev_every=max(1, math.ceil(epochs / evaluations)),
                   patience=max(cfg.patience, evaluations + 1))


def ndcg_on_test_splits(tuner_dir: Path, evals: list[TrainingSet], bf16: bool) -> dict[str, float]:
    """nDCG@10 of a saved tuner on each evaluation set's test split (full corpus, exact search)."""
    from ..activations.llm import default_device

    tuner = Tuner.load(tuner_dir, default_device())
    return {ts.data.name: round(split_ndcg(store_encoder(tuner, bf16), ts, ts.data.qrels["test"]), 4) for ts in evals}


def mean_score(scores: dict[str, float]) -> float | None:
    """The mean of the sets' scores, rounded as point.json keeps them (None without sets)."""
    mean = mean_or_none(list(scores.values()))
    return None if mean is None else round(mean, 4)


def train_point(sets: list[TrainingSet], evals: list[TrainingSet], tuner_cfg: TunerConfig, cfg: TrainConfig,
              queries: int | None, min_steps: int, folder: Path, label: dict, scores_key: str = "zero_shot") -> dict:
    """Train one point (resuming a killed one) and score it on the `evals` sets' test splits (under
    `scores_key`, their mean under `<scores_key>_mean`); returns and writes `point.json`."""
    folder = Path(folder)
    done = folder / "point.json"
    recipe = recipe_for(sets, cfg, queries, min_steps)
    inputs = {**data_setup(sets), "tests": [ts.data.name for ts in evals]}
    if done.exists():
        point = json.loads(done.read_text())
        same = (numeric_settings(TrainConfig(**point["train"])) == numeric_settings(recipe)
                and TunerConfig(**point["tuner"]).to_dict() == tuner_cfg.to_dict())
        old = point.get("inputs") or {}
        if same and {**old, "tests": inputs["tests"]} == inputs:
            if old["tests"] == inputs["tests"]:
                return point
            if (folder / "tuner" / "best").exists():  # the same tuner, other test sets: score again, no training
                point[scores_key] = ndcg_on_test_splits(folder / "tuner" / "best", evals, recipe.bf16)
                point[f"{scores_key}_mean"] = mean_score(point[scores_key])
                point["inputs"] = inputs
                atomic_file(done, lambda tmp: tmp.write_text(json.dumps(point, indent=1)))
                return point
    summary = train(sets, tuner_cfg, recipe, folder / "tuner")
    point = {**label, "queries": queries or sum(len(ts.pairs) for ts in sets), "steps": summary["steps"],
             "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
             "parameters": summary["parameters"], "train_seconds": summary["train_seconds"],
             "dev_ndcg@10": round(summary["dev_ndcg@10"], 4),
             scores_key: ndcg_on_test_splits(folder / "tuner" / "best", evals, recipe.bf16),
             "train": asdict(recipe), "tuner": tuner_cfg.to_dict(), "inputs": inputs}
    point[f"{scores_key}_mean"] = mean_score(point[scores_key])
    atomic_file(done, lambda tmp: tmp.write_text(json.dumps(point, indent=1)))
    return point


def reference_scores(sets: list[TrainingSet], evals: list[TrainingSet], metrics: dict | None) -> dict:
    """BM25 and the best raw pooled layer on the same dev splits (mean over sets) and zero-shot test sets."""
    from ..retrieval.baselines import bm25_run, raw_layer_runs

    def mean_dev(run_of) -> float:
        return float(np.mean([evaluate(run_of(ts, list(ts.dev_qrels)), ts.dev_qrels)["nDCG@10"]
                              for ts in sets if ts.dev_qrels]))

    raw_dev: dict[int, list[float]] = {}
    for ts in sets:
        if ts.dev_qrels:
            for layer, run in raw_layer_runs(ts.queries, ts.corpus, list(ts.dev_qrels)).items():
                raw_dev.setdefault(layer, []).append(evaluate(run, ts.dev_qrels)["nDCG@10"])
    best_layer = max(raw_dev, key=lambda layer: np.mean(raw_dev[layer]))
    raw = f"raw-layer-{best_layer}"  # the evaluate stage's name for it
    ref = {"dev": {"bm25": round(mean_dev(lambda ts, q: bm25_run(ts.data, q)), 4),
                   raw: round(float(np.mean(raw_dev[best_layer])), 4)},
           "zero_shot": {}}
    if metrics:  # the configuration's own test scores (evaluate stage), for the zero-shot lines
        names = [ts.data.name for ts in evals]
        for system in ("bm25", raw):
            values = [metrics.get(n, {}).get(system, {}).get("nDCG@10") for n in names]
            if all(v is not None for v in values):
                ref["zero_shot"][system] = round(float(np.mean(values)), 4)
    return ref


def read_points(root: Path) -> list[dict]:
    """Every finished point under a scaling folder, wherever it was trained."""
    return sorted((json.loads(p.read_text()) for p in Path(root).glob("*/point.json")),
                  key=lambda p: (p["variant"], p.get("size") or "", p["queries"]))


def line_label(point: dict) -> str:
    return point["variant"] + (f" ({point['size']}, {point['parameters'] / 1e6:.2f}M)" if point.get("size") else "")


def plot_curve(points: list[dict], reference: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, ref_key, title in ((axes[0], "dev_ndcg@10", "dev", "dev (mean over training sets)"),
                                    (axes[1], "zero_shot_mean", "zero_shot", "zero-shot test (mean)")):
        lines: dict[str, list[dict]] = {}
        for p in points:
            lines.setdefault(line_label(p), []).append(p)
        for label, pts in lines.items():
            pts = sorted(pts, key=lambda p: p["queries"])
            ax.plot([p["queries"] for p in pts], [p[key] for p in pts], "o-", label=label)
        for (system, value), style in zip(reference.get(ref_key, {}).items(), ("--", ":")):
            ax.axhline(value, color="gray", ls=style, label=system)
        ax.set(xscale="log", xlabel="training queries", ylabel="nDCG@10", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    atomic_file(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def curve_table(points: list[dict]) -> str:
    from ..common.tables import markdown_table

    rows = [{"tuner": line_label(p), "queries": f"{p['queries']:,}", "steps": p["steps"],
             "epochs": p["epochs_run"], "dev nDCG@10": p["dev_ndcg@10"], **p["zero_shot"],
             "zero-shot mean": p["zero_shot_mean"], "train s": f"{p['train_seconds']:,.0f}",
             "trained on": p.get("device", "")} for p in points]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return markdown_table(rows, columns)
