"""Stage two: train a tuner purely from the activation stores (the LLM is never loaded).

The loop, its batches, loss, schedule and dev selection are loop.py's (the method's step 3, DESIGN.md), shared with the
adapter; here is what is the tuner's own: its batches' states read from the stores (loaded within a memory budget
or streamed, read ahead), and an epoch-level checkpoint a killed run resumes from (every epoch seeds its own
sampling and dropout, so a resumed run equals an uninterrupted one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..activations.store import check_compatible
from ..common.atomic import atomic_dir, atomic_file
from ..common.config import IO_ONLY, TrainConfig, TunerConfig
from ..common.errors import ConfigError
from ..common.precision import autocast, feed_dtype
from .checkpoints import resume_or_start, save_checkpoint
from .loop import Trainee, batch_layout, contrastive_loss, fit, optimizer, optimizer_step
from .model import Tuner
from .training_sets import TrainingSet, sample_queries

log = logging.getLogger(__name__)


def numeric_settings(cfg: TrainConfig) -> dict:
    """The settings that decide the weights: a checkpoint or a finished run is reused when these match, so
    moving a store between memory and streaming does not retrain."""
    return {k: v for k, v in asdict(cfg).items() if k not in IO_ONLY}


def data_setup(sets: list[TrainingSet]) -> dict:
    """What a training run reads of its sets: their names, the stores' fingerprints, and (hashed) the training
    pairs and dev qrels. A checkpoint or a finished point is reused only where this matches."""
    data = json.dumps([[ts.data.name, ts.pairs, ts.dev_qrels] for ts in sets], sort_keys=True, default=sorted)
    return {"data": [ts.data.name for ts in sets], "stores": [[ts.queries.fingerprint, ts.corpus.fingerprint]
                                                             for ts in sets],
            "pairs_sha256": hashlib.sha256(data.encode()).hexdigest()}


def read_batch(ts: TrainingSet, batch, layers: list[int], dtype: torch.dtype = torch.float32) -> dict:
    """The states a batch needs, read from the stores (memory or Zarr) in `dtype`: what the prefetcher runs
    ahead."""
    qids, docs, targets, false_neg = batch_layout(batch)
    qs, qm = ts.queries.batch(qids, layers, dtype)
    ds, dm = ts.corpus.batch(docs, layers, dtype)
    return {"q": (qs, qm), "d": (ds, dm), "targets": targets, "false_neg": false_neg}


def info_nce(tuner: Tuner, states: dict, device) -> torch.Tensor:
    """InfoNCE of a batch's queries against its positives, hard negatives and the other queries' documents."""
    (qs, qm), (ds, dm) = states["q"], states["d"]
    q = tuner({k: v.to(device) for k, v in qs.items()}, qm.to(device))
    d = tuner({k: v.to(device) for k, v in ds.items()}, dm.to(device))
    return contrastive_loss(q, d, states["targets"], states["false_neg"], tuner.score_scale())


def prefetched(batches, sets: list[TrainingSet], layers: list[int], depth: int,
               dtype: torch.dtype = torch.float32):
    """Yields each batch's states (in `dtype`), with the next `depth` batches read by a background thread while the
    tuner computes: streamed stores hide their reads behind the step (NumPy and Zarr's decoding release the GIL)."""
    if depth <= 0:
        for s_i, batch in batches:
            yield read_batch(sets[s_i], batch, layers, dtype)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        queue = deque()
        for s_i, batch in batches:
            queue.append(pool.submit(read_batch, sets[s_i], batch, layers, dtype))
            if len(queue) > depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def load_within_budget(sets: list[TrainingSet], layers: list[int], budget_gb: float, device: str) -> list[str]:
    """Load stores' layers into memory, smallest first, while they fit in `budget_gb`; the rest are streamed
    from Zarr batch by batch. Returns the streamed stores' paths."""
    stores = sorted({id(s): s for ts in sets for s in (ts.queries, ts.corpus)}.values(), key=lambda s: s.nbytes(layers))
    left, streamed = budget_gb * 1e9, []
    for store in stores:
        if store.nbytes(layers) <= left:
            store.load(layers, device)
            left -= store.nbytes(layers)
        else:
            streamed.append(str(store.path))
    return streamed


def store_encoder(tuner: Tuner, bf16: bool = True):
    """The dev scorer's encoder (loop.SetEncoder): the set's corpus and the queries its queries store holds, read
    from the stores."""
    def encode(ts: TrainingSet, qids: list[str]):
        qids = [q for q in qids if q in ts.queries.row]
        corpus = tuner.encode_store(ts.corpus, desc="dev corpus", progress=False, bf16=bf16)
        return list(ts.corpus.ids), corpus, qids, tuner.encode_store(ts.queries, qids, progress=False, bf16=bf16)
    return encode


# ------------------------------------------------------------------ the loop


def train_step(tuner: Tuner, opt, states: dict, device: str, amp, clip: float) -> float:
    """One optimizer step of InfoNCE on a batch's states (gradients clipped to `clip`); returns the loss."""
    with amp:
        loss = info_nce(tuner, states, device)
    return optimizer_step(tuner, opt, loss, clip)


def layer_pair(selection_rule: str, selection: Path | None) -> tuple[int, int] | None:
    """The (U, A) pair a run's layer selection asks for (`--layer-selection`): None for `geometry` (the analysis'
    rule), the sweep's dev pick for `dev` (read from `selection`), or an explicit `U,A`."""
    if selection_rule == "geometry":
        return None
    if selection_rule == "dev":
        if selection is None or not Path(selection).is_file():
            raise ConfigError(f"layer selection dev reads the sweep's selection.json; not found: {selection}")
        pair = json.loads(Path(selection).read_text()).get("dev")
        if not pair:
            raise ConfigError(f"{selection}: the sweep has no dev pick (no grid points were trained); configure "
                              "`sweep:` or use --layer-selection geometry")
        return int(pair[0]), int(pair[1])
    try:
        u, a = (int(x) for x in selection_rule.split(","))
    except ValueError:
        raise ConfigError(f"--layer-selection {selection_rule!r}: give geometry, dev or a pair U,A such as 6,0"
                          ) from None
    return u, a


def train(sets: list[TrainingSet], tuner_cfg: TunerConfig, cfg: TrainConfig, out: Path,
          device: str | None = None, progress: bool = True, live: Path | None = None) -> dict:
    """Train one tuner into `out` (best/, train.json, training.png); the loss and dev curves go to the dvclive
    folder `live` (default `out/live`: metrics.json, plots/metrics/{train/loss,dev/ndcg@10}.tsv)."""
    out = Path(out)
    sets = sample_queries(sets, cfg.max_queries, cfg.seed)
    stores = check_compatible([s for ts in sets for s in (ts.queries, ts.corpus)])  # one model, layers, template
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # stores that fit the memory budget are loaded (on a GPU they move there once: a step is then a gather there);
    # the others are streamed from Zarr, with the next batches read ahead
    streamed = load_within_budget(sets, tuner_cfg.layers, cfg.memory_gb, device)
    if streamed:
        log.info(f"streaming {len(streamed)} store(s) larger than the {cfg.memory_gb} GB budget: {', '.join(streamed)}")
    torch.manual_seed(cfg.seed)
    tuner = Tuner(tuner_cfg).to(device)
    opt, schedule = optimizer(tuner.parameters(), sets, cfg)
    # what a checkpoint must match to be resumed: settings, the stores' fingerprints, the pairs and dev qrels
    setup = {"tuner": tuner_cfg.to_dict(), "train": numeric_settings(cfg), **data_setup(sets)}
    state = resume_or_start(tuner, opt, schedule, setup, out)
    amp, feed = autocast(device, cfg.bf16), feed_dtype(device, cfg.bf16)
    trainee = Trainee(
        tuner, inputs=lambda batches: prefetched(batches, sets, tuner_cfg.layers, cfg.prefetch, feed),
        step=lambda states: train_step(tuner, opt, states, device, amp, cfg.clip),
        encode=store_encoder(tuner, cfg.bf16),
        save=lambda folder, extra: tuner.save(folder, {**extra, "stores": stores}))
    fit(trainee, schedule, sets, cfg, state, out, progress,
        checkpoint=lambda state: save_checkpoint(tuner, opt, schedule, state, out / "checkpoint"))
    summary = {"parameters": tuner.num_parameters(), "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
               "dev_ndcg@10": state["best"], "train_seconds": round(state["seconds"], 1),
               "steps": state["step"], "tuner": tuner_cfg.to_dict(), "train": asdict(cfg)}
    write_logs(state, summary, out, Path(live) if live else out / "live")
    for done in (out / "checkpoint", out / ".checkpoint.old"):  # finished: a later run starts afresh, never from
        shutil.rmtree(done, ignore_errors=True)  # what a kill during a checkpoint swap left behind
    return summary


def write_logs(state: dict, summary: dict, out: Path, live: Path) -> None:
    """train.json (what the report reads), the curves through dvclive (`dvc plots show`, `dvc exp show`), and
    training.png for the report. Written once training ends, each atomically, so a kill leaves the old ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dvclive import Live

    atomic_file(out / "train.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))

    def log_curves(tmp: Path) -> None:
        per_epoch = len(state["losses"]) // max(1, state["epoch"])  # dev is scored at the end of an epoch
        with Live(dir=str(tmp), save_dvc_exp=False, dvcyaml=None, report=None) as run:
            for point in state["losses"]:
                run.step = point["step"]
                run.log_metric("train/loss", point["loss"])
            for point in state["dev"]:
                if point["dev_ndcg@10"] is not None:
                    run.step = point["epoch"] * per_epoch
                    run.log_metric("dev/ndcg@10", point["dev_ndcg@10"])
            run.summary["best"] = {k: summary[k] for k in ("dev_ndcg@10", "best_epoch", "steps", "train_seconds")}

    atomic_dir(live, log_curves)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    # each batch comes from one set and the sets differ in difficulty: one smoothed line per set shows each trend
    by_set: dict[str, list[dict]] = {}
    for x in state["losses"]:
        by_set.setdefault(x.get("set", "all"), []).append(x)
    for name, points in sorted(by_set.items()):
        steps, losses = [x["step"] for x in points], [x["loss"] for x in points]
        w = max(1, min(len(losses) // 10, 25))
        a.plot(steps[w - 1 :], np.convolve(losses, np.ones(w) / w, mode="valid"), lw=1.5,
               label=f"{name} (mean of {w})" if w > 1 else name)
    a.legend(fontsize=7)
    a.set(xlabel="step", ylabel="InfoNCE loss", title="training loss per training set")
    dev = [x for x in state["dev"] if x["dev_ndcg@10"] is not None]
    if len(dev) > 1:
        b.plot([x["epoch"] for x in dev], [x["dev_ndcg@10"] for x in dev], "o-")
        b.set(xlabel="epoch", ylabel="dev nDCG@10", title="model selection (dev only)")
    else:  # scored once (train.dev_every): a number, not a one-dot curve
        b.axis("off")
        b.text(0.5, 0.5, f"dev nDCG@10 {dev[0]['dev_ndcg@10']:.3f}\nafter epoch {dev[0]['epoch']} (scored once)"
               if dev else "dev not scored", ha="center", va="center", fontsize=12)
    fig.tight_layout()
    atomic_file(out / "training.png", lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
