"""Which layers? The (U, A) sweep of issue 14: one LMORT tuner per pair of stored layers, plus the reviewers'
fusion baselines and a pooled-linear probe per layer, all trained with one recipe from one multi-layer store
(stage one ran once). Dev nDCG@10 ranks them; test splits are scored and reported, never chosen on.

Each point is a scaling-curve point (`scaling.run_point`: a folder with `point.json` written last), so a killed
sweep resumes, several processes can share a grid (`shard`), and points trained elsewhere drop in."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .metrics import markdown_table
from .scaling import run_point
from .train import TrainConfig, TrainingSet
from .tuner import TunerConfig

log = logging.getLogger(__name__)

BASELINES = ("pooled-linear", "first-last", "scalar-mix", "lmort-multi")  # pooled-linear: one point per layer


@dataclass(frozen=True)
class SweepPoint:
    variant: str  # "lmort" (a grid pair) or one of BASELINES
    u_layer: int | None = None
    a_layer: int | None = None

    @property
    def name(self) -> str:
        if self.variant == "lmort":
            return f"lmort-u{self.u_layer}-a{self.a_layer}"
        return self.variant if self.u_layer is None else f"{self.variant}-{self.u_layer}"

    @property
    def layers(self) -> list[int]:
        return sorted({x for x in (self.u_layer, self.a_layer) if x is not None})


def plan(stored: list[int], layers: list[int] | None = None, pairs: list | None = None,
         baselines: list[str] = ()) -> list[SweepPoint]:
    """The baselines (pooled-linear on each layer of the grid), then the grid: every ordered pair of `layers`
    (default every stored layer) or the explicit `pairs`, ordered by U so that a process keeps the U-layer
    loaded along a row."""
    if pairs:
        chosen = [tuple(p) for p in pairs]
        grid_layers = sorted({x for p in chosen for x in p})
    else:
        grid_layers = sorted(layers) if layers else sorted(stored)
        chosen = [(u, a) for u in grid_layers for a in grid_layers]
    missing = sorted({x for p in chosen for x in p} - set(stored))
    if missing:
        raise ValueError(f"sweep layers {missing} are not in the store (it holds layers {sorted(stored)})")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown sweep baselines {unknown}; choose from {', '.join(BASELINES)}")
    points = []  # the baselines first: few, and wanted even when a time limit cuts the grid
    for b in baselines:
        if b == "pooled-linear":
            points += [SweepPoint(b, layer, layer) for layer in grid_layers]
        else:
            points.append(SweepPoint(b))
    return points + [SweepPoint("lmort", u, a) for u, a in sorted(chosen)]


def run_sweep(sets: list[TrainingSet], tests: list[TrainingSet], points: list[SweepPoint], config_of,
              cfg: TrainConfig, min_steps: int, out: Path, label: dict, progress=iter) -> list[dict]:
    """Train and score every point not done yet (`config_of(point) -> TunerConfig`). Before each point the
    stores forget the layers it does not read, so a CPU never holds the whole grid in memory."""
    done = []
    for p in progress(points):
        tuner_cfg: TunerConfig = config_of(p)
        for ts in [*sets, *tests]:
            for store in (ts.queries, ts.corpus):
                store.release(tuner_cfg.layers)
        info = {**label, "variant": p.variant, "point": p.name, "u_layer": p.u_layer, "a_layer": p.a_layer,
                "layers": tuner_cfg.layers}
        point = run_point(sets, tests, tuner_cfg, cfg, None, min_steps, Path(out) / p.name, info, "test")
        log.info(f"{p.name}: dev {point['dev_ndcg@10']}, test {point['test_mean']} ({point['steps']} steps, "
                 f"{point['train_seconds']} s)")
        done.append(point)
    return done


def collect(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(root).glob("*/point.json"))]


def selection(points: list[dict], geometry: dict) -> dict:
    """The geometric rule's pair against the grid: its rank by dev (and by test), the dev-best pair, and whether
    the rule lands in the top 10% of the grid."""
    grid = [p for p in points if p["variant"] == "lmort"]
    rule = (geometry["u_layer"], geometry["a_layer"])
    out = {"geometry": list(rule), "dev": None, "pairs": len(grid)}
    if not grid:
        return out

    def rank(key: str) -> dict:
        ordered = sorted(grid, key=lambda p: -(p[key] if p[key] is not None else -1))
        names = [(p["u_layer"], p["a_layer"]) for p in ordered]
        top = max(1, int(np.ceil(0.1 * len(grid))))
        r = names.index(rule) + 1 if rule in names else None
        return {"best": list(names[0]), "best_score": ordered[0][key], "rule_rank": r,
                "rule_score": ordered[r - 1][key] if r else None, "top10_size": top,
                "rule_in_top10": bool(r and r <= top)}

    out["dev_rank"] = rank("dev_ndcg@10")
    out["dev"] = out["dev_rank"]["best"]
    if all(p.get("test_mean") is not None for p in grid):
        out["test_rank"] = rank("test_mean")
    return out


def plot_heatmap(points: list[dict], sel: dict, out: Path, key: str = "dev_ndcg@10", title: str = "dev") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [p for p in points if p["variant"] == "lmort"]
    us = sorted({p["u_layer"] for p in grid})
    as_ = sorted({p["a_layer"] for p in grid})
    m = np.full((len(us), len(as_)), np.nan)
    for p in grid:
        m[us.index(p["u_layer"]), as_.index(p["a_layer"])] = p[key] if p[key] is not None else np.nan
    fig, ax = plt.subplots(figsize=(1.0 + 0.65 * len(as_), 0.8 + 0.55 * len(us)))
    im = ax.imshow(m, cmap="viridis", origin="lower")
    for i in range(len(us)):
        for j in range(len(as_)):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < np.nanmean(m) else "black")
    marks = [(tuple(sel["geometry"]), "red", "geometric rule"), (tuple(sel.get("dev") or ()), "orange", "best on dev")]
    for (pair, color, label) in marks:
        if len(pair) == 2 and pair[0] in us and pair[1] in as_:
            ax.add_patch(plt.Rectangle((as_.index(pair[1]) - 0.5, us.index(pair[0]) - 0.5), 1, 1, fill=False,
                                       ec=color, lw=2.5, label=label))
    ax.set_xticks(range(len(as_)), as_)
    ax.set_yticks(range(len(us)), us)
    ax.set(xlabel="A-layer (cross-attention keys)", ylabel="U-layer (self-attention stream)",
           title=f"LMORT {title} nDCG@10 over (U, A)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7)
    fig.tight_layout()
    atomic_file(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def sweep_tables(points: list[dict], sel: dict, top: int = 5) -> str:
    """Markdown: the verdict on the rule, the top pairs and the rule's pick, then the baselines."""
    grid = sorted((p for p in points if p["variant"] == "lmort"), key=lambda p: -(p["dev_ndcg@10"] or -1))
    if not grid and not points:
        return "No sweep points configured (`sweep:`).\n"

    def row(p: dict, rank: int | None = None) -> dict:
        return {"rank (dev)": rank or "", "tuner": p["point"], "layers": ",".join(map(str, p["layers"])),
                "dev nDCG@10": p["dev_ndcg@10"], **(p.get("test") or {}), "test mean": p.get("test_mean"),
                "train s": f"{p['train_seconds']:,.0f}"}

    lines = []
    rule = tuple(sel["geometry"])
    if "dev_rank" in sel:
        d = sel["dev_rank"]
        lines.append(f"The geometric rule picks (U, A) = {rule}: rank {d['rule_rank']} of {sel['pairs']} pairs on dev "
                     f"({d['rule_score']} against the best, {tuple(d['best'])}, at {d['best_score']}); the top 10% "
                     f"is the best {d['top10_size']}: {'inside' if d['rule_in_top10'] else 'outside'}.")
        if "test_rank" in sel:
            t = sel["test_rank"]
            lines.append(f"On test (reported, never chosen on): rank {t['rule_rank']} of {sel['pairs']} "
                         f"({t['rule_score']} against {tuple(t['best'])} at {t['best_score']}): "
                         f"{'inside' if t['rule_in_top10'] else 'outside'} the top 10%.")
        lines.append("")
    fused = [p for p in points if p["variant"] in ("first-last", "scalar-mix", "lmort-multi")]
    if grid and fused:
        best_fused = max(fused, key=lambda p: p["dev_ndcg@10"] or -1)
        lines += [f"Best fusion baseline on dev: {best_fused['point']} ({best_fused['dev_ndcg@10']} dev, "
                  f"{best_fused['test_mean']} test mean) against the best LMORT pair, {grid[0]['point']} "
                  f"({grid[0]['dev_ndcg@10']} dev, {grid[0]['test_mean']} test mean).", ""]
    rows = [row(p, i + 1) for i, p in enumerate(grid) if i < top or (p["u_layer"], p["a_layer"]) == rule]
    others = [row(p) for p in sorted((p for p in points if p["variant"] != "lmort"),
                                     key=lambda p: (p["variant"], p["u_layer"] or 0))]
    table = rows + others
    if table:
        lines.append(markdown_table(table, list(dict.fromkeys(k for r in table for k in r))))
    if grid:
        lines += ["", "Dev nDCG@10 of every pair (rows: U-layer, columns: A-layer):", "", grid_table(grid)]
    return "\n".join(lines) + "\n"


def grid_table(grid: list[dict], key: str = "dev_ndcg@10") -> str:
    us = sorted({p["u_layer"] for p in grid})
    as_ = sorted({p["a_layer"] for p in grid})
    value = {(p["u_layer"], p["a_layer"]): p[key] for p in grid}
    rows = [{"U \\ A": u, **{str(a): value.get((u, a)) for a in as_}} for u in us]
    return markdown_table(rows, ["U \\ A", *map(str, as_)])
