"""`lmort scale`: the data-scaling curve (stage two only): the same recipe on nested samples of the training
queries, for each tuner size and variant, from the same stores; dev and zero-shot nDCG@10, a PNG and a table."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm.auto import tqdm

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.config import section
from pipeline.common.params import load_params, train_config, tuner_config


def write_no_points(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_file(out / "scaling.md", lambda tmp: tmp.write_text("No scaling points configured (`scaling:`).\n"))
    click.echo(f"no scaling points configured; wrote {out / 'scaling.md'}")


@click.command("scale")
@click.option("--stores", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--data", "data", multiple=True, required=True, help="Training set(s), as for `lmort train`.")
@click.option("--zero-shot", "zero_shot", multiple=True,
              help="Sets scored on their test split (never chosen on); default: `scaling.zero_shot`.")
@click.option("--geometry", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True), default="params.yaml",
              show_default=True, help="YAML with `tuner:`, `train:` (the recipe) and `scaling:` sections.")
@click.option("--set", "overrides", multiple=True,
              help="Override a parameter, e.g. --set 'scaling.sizes=[paper]' (values parsed as YAML).")
@click.option("--metrics", type=click.Path(path_type=Path), default=None,
              help="The configuration's metrics.json, for the BM25 and raw-layer zero-shot lines.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder of points + curve.")
@click.option("--points-only", is_flag=True, help="Train and score the points; leave the curve for later.")
@friendly_errors
def command(stores, data, zero_shot, geometry, params_file, overrides, metrics, out, points_only) -> None:
    """Train every (variant, size, queries) point of `scaling:` that is not done yet, then draw the curve."""
    check_writable(out)
    params = load_params(params_file, overrides)
    scaling = section(params, "scaling")
    todo = [(v, s if v != "pooled-linear" else None, None if q == "all" else int(q))
            for v in scaling.variants for s in scaling.sizes or (None,) for q in scaling.queries]
    todo = list(dict.fromkeys(todo))  # pooled-linear has no size: one line
    if not todo and not any(Path(out).glob("*/point.json")):  # a configuration without a scaling section: no torch
        return write_no_points(out)
    from pipeline.activations.llm import device_name
    from pipeline.tuner.scaling import curve_table, plot_curve, point_name, read_points, reference_scores, train_point
    from pipeline.tuner.training_sets import open_training_sets

    sets = open_training_sets(stores, names(data))
    evals = open_training_sets(stores, names(zero_shot) or list(scaling.zero_shot), pairs=False)
    first = sets[0].corpus
    sink = bool(first.fingerprint.get("attention_sink"))
    cfg = train_config(params)
    device = device_name()
    for variant, size, queries in tqdm(todo, desc="scaling points", unit="point"):
        tuner_cfg = tuner_config({**params, "tuner": {**params.get("tuner", {}), "size": size}}, variant, geometry,
                                 first.width, sink)
        label = {"variant": variant, "size": size, "device": device}
        point = train_point(sets, evals, tuner_cfg, cfg, queries, scaling.min_steps,
                          out / point_name(variant, size, queries), label)
        click.echo(f"{point_name(variant, size, queries)}: dev {point['dev_ndcg@10']}, zero-shot "
                   f"{point['zero_shot_mean']} ({point['steps']} steps, {point['train_seconds']} s)")
    points = read_points(out)
    if points_only:
        return
    if not points:  # a configuration without a scaling section
        return write_no_points(out)
    ref_path = out / "reference.json"
    if not ref_path.exists():
        ref = reference_scores(sets, evals, json.loads(Path(metrics).read_text()) if metrics and
                               Path(metrics).exists() else None)
        atomic_file(ref_path, lambda tmp: tmp.write_text(json.dumps(ref, indent=1)))
    ref = json.loads(ref_path.read_text())
    plot_curve(points, ref, out / "scaling.png")
    lines = [curve_table(points), "", "Reference (not trained): " +
             "; ".join(f"{k} {system} {v}" for k, d in ref.items() for system, v in d.items())]
    atomic_file(out / "scaling.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    click.echo(f"{len(points)} points; wrote {out / 'scaling.png'} and {out / 'scaling.md'}")
