"""Stage two: train a tuner purely from the activation stores (the LLM is never loaded).

InfoNCE over in-batch and BM25 hard negatives (METHOD.md step 3), AdamW with warm-up and linear decay,
gradient clipping, model selection on dev nDCG@10 only, and an epoch-level checkpoint a killed run resumes
from: every epoch seeds its own sampling and dropout, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..activations.store import check_compatible
from ..common.atomic import atomic_dir, atomic_file, existing_dir
from ..common.config import IO_ONLY, TrainConfig, TunerConfig
from ..common.metrics import evaluate
from ..common.precision import autocast, feed_dtype
from ..retrieval.index import build_index, retrieve
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


def set_quotas(sizes: list[int], batch_size: int, alpha: float) -> list[int]:
    """Batches per training set in one epoch. An epoch has as many batches as the sets' queries fill; set i gets
    a share proportional to (its queries)^alpha: 1 = proportional to size (each query once an epoch, the
    original rule), 0 = uniform over sets, 0.5 = square-root (a set 60x larger gets about 8x the batches, so
    squad does not drown scifact; the small sets repeat their queries, the large ones show a fresh sample)."""
    natural = [max(1, n // batch_size) if n else 0 for n in sizes]
    if alpha == 1.0:
        return natural
    weights = [n**alpha for n in sizes]
    return [max(1, round(sum(natural) * w / sum(weights))) if n else 0 for n, w in zip(sizes, weights)]


def epoch_batches(sets: list[TrainingSet], cfg: TrainConfig, epoch: int):
    """Seeded per epoch: a list of (set index, [(qid, pos, negs, all positives)]). Every batch comes from one set,
    so its in-batch negatives share a corpus; how many batches each set gets is `set_quotas`."""
    g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    rows_of = [[r for r in ts.pairs if r["positive_ids"]] for ts in sets]
    quotas = set_quotas([len(rows) for rows in rows_of], cfg.batch_size, cfg.mix_alpha)
    out = []
    for s_i, (rows, quota) in enumerate(zip(rows_of, quotas)):
        made = 0
        while made < quota:  # one permutation after another; no query twice within a batch
            perm = torch.randperm(len(rows), generator=g).tolist()
            for b in range(0, max(1, len(perm) - cfg.batch_size + 1), cfg.batch_size):  # full batches only
                if made == quota:
                    break
                batch = []
                for r in (rows[i] for i in perm[b : b + cfg.batch_size]):
                    pos = r["positive_ids"][int(torch.randint(len(r["positive_ids"]), (1,), generator=g))]
                    negs = r["negative_ids"]
                    pick = torch.randperm(len(negs), generator=g)[: cfg.negatives].tolist() if negs else []
                    batch.append((r["query_id"], pos, [negs[i] for i in pick], set(r["positive_ids"])))
                out.append((s_i, batch))
                made += 1
    order = torch.randperm(len(out), generator=g).tolist()
    out = [out[i] for i in order]
    return out[: cfg.max_steps_per_epoch] if cfg.max_steps_per_epoch else out


def batch_layout(batch) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor]:
    """A batch's query ids, its documents (each query's positive, then its hard negatives), the index of each
    query's positive among them, and the [queries, documents] mask of false negatives: another query's document
    that is also judged relevant to this query is not a negative."""
    qids = [b[0] for b in batch]
    docs, targets = [], []
    for _, pos, negs, _ in batch:
        targets.append(len(docs))
        docs += [pos, *negs]
    false_neg = torch.tensor([[docs[j] in b[3] and j != targets[i] for j in range(len(docs))]
                              for i, b in enumerate(batch)])
    return qids, docs, torch.tensor(targets), false_neg


def read_batch(ts: TrainingSet, batch, layers: list[int], dtype: torch.dtype = torch.float32) -> dict:
    """The states a batch needs, read from the stores (memory or Zarr) in `dtype`: what the prefetcher runs
    ahead."""
    qids, docs, targets, false_neg = batch_layout(batch)
    qs, qm = ts.queries.batch(qids, layers, dtype)
    ds, dm = ts.corpus.batch(docs, layers, dtype)
    return {"q": (qs, qm), "d": (ds, dm), "targets": targets, "false_neg": false_neg}


def contrastive_loss(q: torch.Tensor, d: torch.Tensor, targets: torch.Tensor, false_neg: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """InfoNCE of queries `q` [B, D] against documents `d` [N, D]: each query's positive (`targets`) against every
    other document of the batch, false negatives masked out."""
    scores = (q @ d.T).float() * scale
    scores = scores.masked_fill(false_neg.to(scores.device), float("-inf"))
    return F.cross_entropy(scores, targets.to(scores.device))


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


def split_ndcg(tuner: Tuner, ts: TrainingSet, qrels: dict, progress: bool = False, bf16: bool = True) -> float:
    """nDCG@10 of the queries judged in `qrels` against the set's full corpus (exact search): dev selection and
    the scaling curve's zero-shot scores share it."""
    qids = [q for q in qrels if q in ts.queries.row]
    corpus = tuner.encode_store(ts.corpus, desc="dev corpus", progress=progress, bf16=bf16)
    run = retrieve(build_index(corpus, use_gpu=False), list(ts.corpus.ids), qids,
                   tuner.encode_store(ts.queries, qids, progress=False, bf16=bf16))
    return evaluate(run, qrels)["nDCG@10"]


def dev_ndcg(tuner: Tuner, sets: list[TrainingSet], progress: bool = False, bf16: bool = True) -> float | None:
    """Mean dev nDCG@10 over the sets with a dev split (full corpus, exact search)."""
    scores = [split_ndcg(tuner, ts, ts.dev_qrels, progress, bf16) for ts in sets if ts.dev_qrels]
    return float(np.mean(scores)) if scores else None


# ------------------------------------------------------------------ the learning-rate schedule


def warmup_linear_decay(step: int, total: int, warmup: float) -> float:
    """The learning-rate factor before optimizer step `step` (0-based): a linear warm-up over the first `warmup`
    fraction of the `total` steps, then a linear decay to 0. It is torch's LambdaLR with this factor rather than
    transformers' get_linear_schedule_with_warmup, whose warm-up starts at 0 (the first step learns nothing) and
    rounds the warm-up to whole steps: the committed reports were trained with this one, and stay reproducible."""
    return min((step + 1) / max(1, warmup * total), max(0.0, (total - step) / max(1, total * (1 - warmup))))


# ------------------------------------------------------------------ checkpoints (safetensors + JSON)


def _save_checkpoint(tuner, opt, schedule, state: dict, folder: Path) -> None:
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v.contiguous() for pid, st in sd["state"].items() for k, v in st.items()}
    saved = {**state, "param_groups": sd["param_groups"], "schedule": schedule.state_dict()}

    def write(tmp: Path):
        save_file({k: v.detach().cpu().contiguous() for k, v in tuner.state_dict().items()}, tmp / "model.safetensors")
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps(saved, indent=1))
    atomic_dir(folder, write)


def _load_checkpoint(tuner, opt, schedule, folder: Path) -> dict:
    state = json.loads((folder / "state.json").read_text())
    tuner.load_state_dict(load_file(folder / "model.safetensors"))
    flat = load_file(folder / "optimizer.safetensors")
    opt_state: dict = {}
    for key, v in flat.items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    schedule.load_state_dict(state.pop("schedule"))
    return state


def resume_or_start(tuner, opt, schedule, setup: dict, out: Path) -> dict:
    """The training state: a checkpoint's in `out` when it was made with the same `setup` (settings, stores, pairs),
    else a fresh one (a checkpoint of other settings is removed, with the best tuner it had saved)."""
    fresh = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "bad_epochs": 0, "losses": [], "dev": [],
             "seconds": 0.0, "setup": setup}
    ckpt = existing_dir(out / "checkpoint")
    if not (ckpt / "state.json").exists():
        return fresh
    saved = json.loads((ckpt / "state.json").read_text())
    if saved.get("setup") == setup and "schedule" in saved:
        log.info(f"resuming {out} after epoch {saved['epoch']}")
        return _load_checkpoint(tuner, opt, schedule, ckpt)
    log.info(f"{out}: the checkpoint is for other settings; training from scratch")  # a changed parameter
    for old in (ckpt, out / "best"):
        shutil.rmtree(old, ignore_errors=True)
    return fresh


# ------------------------------------------------------------------ the loop


def train_step(tuner: Tuner, opt, states: dict, device: str, amp, clip: float) -> float:
    """One optimizer step of InfoNCE on a batch's states (gradients clipped to `clip`); returns the loss."""
    with amp:
        loss = info_nce(tuner, states, device)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tuner.parameters(), clip)
    opt.step()
    return float(loss.detach())


def train_epoch(tuner: Tuner, opt, schedule, sets: list[TrainingSet], cfg: TrainConfig, state: dict, device: str,
                progress: bool) -> float:
    """One epoch of InfoNCE steps (its batches and dropout seeded by the epoch); returns its mean loss."""
    epoch = state["epoch"]
    torch.manual_seed(cfg.seed * 7919 + epoch)  # dropout of this epoch
    t0 = time.time()
    tuner.train()
    amp, feed = autocast(device, cfg.bf16), feed_dtype(device, cfg.bf16)
    batches = epoch_batches(sets, cfg, epoch)
    bar = tqdm(prefetched(batches, sets, tuner.cfg.layers, cfg.prefetch, feed), total=len(batches),
               desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not progress)
    losses = []
    for (s_i, _), states in zip(batches, bar):
        losses.append(train_step(tuner, opt, states, device, amp, cfg.clip))
        schedule.step()
        state["step"] += 1
        state["losses"].append({"step": state["step"], "loss": losses[-1], "set": sets[s_i].data.name})
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    state["seconds"] += time.time() - t0
    state["epoch"] += 1
    return float(np.mean(losses)) if losses else float("nan")


def select_on_dev(tuner: Tuner, sets: list[TrainingSet], cfg: TrainConfig, state: dict, out: Path,
                  stores: dict) -> float | None:
    """Score dev; keep the tuner in `out/best` when it is the best so far, else count an epoch without gain."""
    score = dev_ndcg(tuner, sets, bf16=cfg.bf16)
    state["dev"].append({"epoch": state["epoch"], "dev_ndcg@10": score})
    if score is None or state["best"] is None or score > state["best"]:
        state.update(best=score, best_epoch=state["epoch"], bad_epochs=0)
        tuner.save(out / "best", {"epoch": state["epoch"], "dev_ndcg@10": score, "stores": stores})
    else:
        state["bad_epochs"] += 1
    return score


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
    opt = torch.optim.AdamW(tuner.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, len(epoch_batches(sets, cfg, 0)) * cfg.epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_linear_decay, total=total, warmup=cfg.warmup))
    # what a checkpoint must match to be resumed: settings, the stores' fingerprints, the pairs and dev qrels
    setup = {"tuner": tuner_cfg.to_dict(), "train": numeric_settings(cfg), **data_setup(sets)}
    state = resume_or_start(tuner, opt, schedule, setup, out)
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        loss = train_epoch(tuner, opt, schedule, sets, cfg, state, device, progress)
        if state["epoch"] % cfg.dev_every == 0 or state["epoch"] == cfg.epochs:
            score = select_on_dev(tuner, sets, cfg, state, out, stores)
            log.info(f"epoch {state['epoch']}: loss {loss:.4f}, dev nDCG@10 "
                     f"{score if score is None else round(score, 4)}")
        else:
            log.info(f"epoch {state['epoch']}: loss {loss:.4f}")
        _save_checkpoint(tuner, opt, schedule, state, out / "checkpoint")
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
