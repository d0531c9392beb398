"""Which layers? The (U, A) sweep: one LMORT tuner per pair of stored layers, plus the reviewers'
fusion baselines and a pooled-linear probe per layer, all trained with one recipe from one multi-layer store
(stage one ran once). Dev nDCG@10 ranks them; test splits are scored and reported, never chosen on.

Each point is a scaling-curve point (`scaling.train_point`: a folder with `point.json` written last), so a killed
sweep resumes, several processes can share a grid (`shard`), and points trained elsewhere drop in."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..common.atomic import atomic_file
from ..common.config import LAYER_FUSIONS, TrainConfig, TunerConfig
from ..common.tables import markdown_table

if TYPE_CHECKING:
    from .training_sets import TrainingSet

log = logging.getLogger(__name__)

BASELINES = ("pooled-linear", *LAYER_FUSIONS)  # pooled-linear: one point per layer


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


def plan(stored: list[int] | None, layers: list[int] | str | None = None, pairs: list | None = None,
         baselines: list[str] = ()) -> list[SweepPoint]:
    """The baselines (pooled-linear on each layer of the grid), then the grid: every ordered pair of `layers`
    (`all` or None: every stored layer; []: no grid) or the explicit `pairs`, ordered by U so that a process keeps
    the U-layer loaded along a row. `stored` (the store's layers) may be None to plan without opening a store."""
    if pairs:
        chosen = [tuple(int(x) for x in p) for p in pairs]
        grid_layers = sorted({x for p in chosen for x in p})
    else:
        if layers is None or layers == "all":
            if stored is None:
                raise ValueError("sweep.layers: all needs the store's layers")
            layers = stored
        grid_layers = sorted(int(x) for x in layers)
        chosen = [(u, a) for u in grid_layers for a in grid_layers]
    missing = sorted({x for p in chosen for x in p} - set(stored)) if stored is not None else []
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
    from .scaling import train_point  # torch: imported only where a point is trained

    done = []
    for p in progress(points):
        tuner_cfg: TunerConfig = config_of(p)
        for ts in [*sets, *tests]:
            for store in (ts.queries, ts.corpus):
                store.release(tuner_cfg.layers)
        info = {**label, "variant": p.variant, "point": p.name, "u_layer": p.u_layer, "a_layer": p.a_layer,
                "layers": tuner_cfg.layers}
        point = train_point(sets, tests, tuner_cfg, cfg, None, min_steps, Path(out) / p.name, info, "test")
        log.info(f"{p.name}: dev {point['dev_ndcg@10']}, test {point['test_mean']} ({point['steps']} steps, "
                 f"{point['train_seconds']} s)")
        done.append(point)
    return done


def read_grid(root: Path, planned: list[SweepPoint] | None = None) -> list[dict]:
    """The finished points under a sweep folder; with `planned`, only those (a folder may keep points of an
    earlier grid, which must not enter this one's ranking)."""
    names = None if planned is None else {p.name for p in planned}
    found = [json.loads(p.read_text()) for p in sorted(Path(root).glob("*/point.json"))]
    return [p for p in found if names is None or p["point"] in names]


def _score(p: dict, key: str) -> float:
    return p[key] if p.get(key) is not None else float("-inf")


def selection(points: list[dict], geometry: dict, planned: int | None = None) -> dict:
    """The geometric rule's pair against the grid: its rank by dev (and by test) as 1 + the pairs strictly
    better (ties share a rank), the dev-best pair (ties broken by the shallower U, then A), and whether the rule
    lands in the top 10% of the grid. `planned`: the grid's size, to say how many pairs are still missing."""
    grid = [p for p in points if p["variant"] == "lmort"]
    rule = (geometry["u_layer"], geometry["a_layer"])
    out = {"geometry": list(rule), "dev": None, "pairs": len(grid), "planned_pairs": planned or len(grid)}
    if not grid:
        return out

    def rank(key: str) -> dict:
        best = min(grid, key=lambda p: (-_score(p, key), p["u_layer"], p["a_layer"]))
        top = max(1, int(np.ceil(0.1 * len(grid))))
        mine = [p for p in grid if (p["u_layer"], p["a_layer"]) == rule]
        r = 1 + sum(_score(p, key) > _score(mine[0], key) for p in grid) if mine else None
        ties = sum(_score(p, key) == _score(mine[0], key) for p in grid) - 1 if mine else None
        return {"best": [best["u_layer"], best["a_layer"]], "best_score": best[key], "rule_rank": r,
                "rule_ties": ties, "rule_score": mine[0][key] if mine else None, "top10_size": top,
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
    grid = sorted((p for p in points if p["variant"] == "lmort"),
                  key=lambda p: (-_score(p, "dev_ndcg@10"), p["u_layer"], p["a_layer"]))
    if not grid and not points:
        return "No sweep points configured (`sweep:`).\n"

    def row(p: dict, rank: int | None = None) -> dict:
        return {"rank (dev)": rank or "", "tuner": p["point"], "layers": ",".join(map(str, p["layers"])),
                "dev nDCG@10": p["dev_ndcg@10"], **(p.get("test") or {}), "test mean": p.get("test_mean"),
                "train s": f"{p['train_seconds']:,.0f}"}

    lines = []
    rule = tuple(sel["geometry"])
    if sel.get("planned_pairs", sel["pairs"]) > sel["pairs"]:
        lines += [f"**{sel['planned_pairs'] - sel['pairs']} of the {sel['planned_pairs']} planned pairs are not "
                  "trained yet**: the ranks below are among the finished ones.", ""]

    def verdict(r: dict, where: str) -> str:
        if r["rule_rank"] is None:
            return f"{where}: the rule's pair {rule} is not in the grid; the best pair is {tuple(r['best'])} at " \
                   f"{r['best_score']}."
        tied = f", tied with {r['rule_ties']} other pair(s)" if r["rule_ties"] else ""
        return (f"{where}: the geometric rule's pair (U, A) = {rule} ranks {r['rule_rank']} of {sel['pairs']}{tied} "
                f"({r['rule_score']} against the best, {tuple(r['best'])}, at {r['best_score']}); the top 10% is "
                f"the best {r['top10_size']}: {'inside' if r['rule_in_top10'] else 'outside'}.")

    if "dev_rank" in sel:
        lines.append(verdict(sel["dev_rank"], "On dev"))
        if "test_rank" in sel:
            lines.append(verdict(sel["test_rank"], "On test (reported, never chosen on)"))
        lines.append("")
    fused = [p for p in points if p["variant"] in LAYER_FUSIONS]
    if grid and fused:
        best_fused = max(fused, key=lambda p: p["dev_ndcg@10"] or -1)
        lines += [f"Best fusion baseline on dev: {best_fused['point']} ({best_fused['dev_ndcg@10']} dev, "
                  f"{best_fused['test_mean']} test mean) against the best LMORT pair, {grid[0]['point']} "
                  f"({grid[0]['dev_ndcg@10']} dev, {grid[0]['test_mean']} test mean).", ""]
    def dev_rank(p: dict) -> int:  # ties share a rank
        return 1 + sum(_score(q, "dev_ndcg@10") > _score(p, "dev_ndcg@10") for q in grid)

    rows = [row(p, dev_rank(p)) for i, p in enumerate(grid) if i < top or (p["u_layer"], p["a_layer"]) == rule]
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
