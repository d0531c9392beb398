"""The one training loop of every trainable encoder: the tuner (from the stores, train.py) and the adapter baseline
(the LLM in every step, adapter_train.py).

Both share the batches (one training set a batch, BM25 hard negatives), the InfoNCE loss, AdamW with warm-up and
linear decay, the epoch seeding (each epoch seeds its sampling and dropout, so a resumed run equals an
uninterrupted one), one dev scorer (nDCG@10 of the dev queries over the full corpus, exact search) and one
selection rule (keep the best on dev; stop after `patience` dev scores without gain). What differs is passed in
as a `Trainee`: how a batch's inputs are read, one optimizer step on them, the encoder dev scores, the save.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..common.atomic import atomic_file
from ..common.config import TrainConfig
from ..common.metrics import evaluate
from ..retrieval.index import build_index, retrieve
from .training_sets import TrainingSet

log = logging.getLogger(__name__)

# (set, query ids of `qrels`) -> (corpus ids, corpus vectors, the query ids encoded, their vectors)
SetEncoder = Callable[[TrainingSet, list[str]], tuple[list[str], np.ndarray, list[str], np.ndarray]]


# ------------------------------------------------------------------ batches and the loss


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


def contrastive_loss(q: torch.Tensor, d: torch.Tensor, targets: torch.Tensor, false_neg: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """InfoNCE of queries `q` [B, D] against documents `d` [N, D]: each query's positive (`targets`) against every
    other document of the batch, false negatives masked out."""
    scores = (q @ d.T).float() * scale
    scores = scores.masked_fill(false_neg.to(scores.device), float("-inf"))
    return F.cross_entropy(scores, targets.to(scores.device))


# ------------------------------------------------------------------ the optimiser and its schedule


def warmup_linear_decay(step: int, total: int, warmup: float) -> float:
    """The learning-rate factor before optimizer step `step` (0-based): a linear warm-up over the first `warmup`
    fraction of the `total` steps, then a linear decay to 0. It is torch's LambdaLR with this factor rather than
    transformers' get_linear_schedule_with_warmup, whose warm-up starts at 0 (the first step learns nothing) and
    rounds the warm-up to whole steps: the committed reports were trained with this one, and stay reproducible."""
    return min((step + 1) / max(1, warmup * total), max(0.0, (total - step) / max(1, total * (1 - warmup))))


def optimizer(parameters: Iterable[torch.nn.Parameter], sets: list[TrainingSet], cfg: TrainConfig):
    """AdamW over `parameters` and its warm-up + linear decay over every step of `cfg.epochs` epochs."""
    opt = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, len(epoch_batches(sets, cfg, 0)) * cfg.epochs)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_linear_decay, total=total, warmup=cfg.warmup))


def optimizer_step(module: torch.nn.Module, opt, loss: torch.Tensor, clip: float) -> float:
    """Backward, the trained parameters' gradients clipped to `clip`, the step; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], clip)
    opt.step()
    return float(loss.detach())


# ------------------------------------------------------------------ dev scoring


def split_ndcg(encode: SetEncoder, ts: TrainingSet, qrels: dict) -> float:
    """nDCG@10 of the queries judged in `qrels` against the set's full corpus (exact search): dev selection and
    the scaling curve's zero-shot scores share it."""
    dids, corpus, qids, queries = encode(ts, list(qrels))
    return evaluate(retrieve(build_index(corpus, use_gpu=False), dids, qids, queries), qrels)["nDCG@10"]


def dev_ndcg(encode: SetEncoder, sets: list[TrainingSet]) -> float | None:
    """Mean dev nDCG@10 over the sets with a dev split (full corpus, exact search)."""
    scores = [split_ndcg(encode, ts, ts.dev_qrels) for ts in sets if ts.dev_qrels]
    return float(np.mean(scores)) if scores else None


# ------------------------------------------------------------------ the loop


@dataclass
class Trainee:
    """What the loop trains. `inputs`: an epoch's batches -> each step's inputs (read ahead, or token ids);
    `step`: one optimizer step on them, returning the loss; `encode`: the dev scorer's encoder; `save`: writes the
    module to a folder with the given fields (the best on dev)."""

    module: torch.nn.Module
    inputs: Callable[[list], Iterator]
    step: Callable[[object], float]
    encode: SetEncoder
    save: Callable[[Path, dict], None]


def fresh_state(setup: dict | None = None) -> dict:
    return {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "bad_epochs": 0, "losses": [], "dev": [],
            "seconds": 0.0, "setup": setup}


def run_epoch(trainee: Trainee, schedule, sets: list[TrainingSet], cfg: TrainConfig, state: dict, progress: bool,
              desc: str) -> float:
    """One epoch of steps (its batches and dropout seeded by the epoch); returns its mean loss."""
    epoch = state["epoch"]
    torch.manual_seed(cfg.seed * 7919 + epoch)  # dropout of this epoch
    t0 = time.time()
    trainee.module.train()
    batches = epoch_batches(sets, cfg, epoch)
    bar = tqdm(trainee.inputs(batches), total=len(batches), desc=f"{desc} {epoch + 1}/{cfg.epochs}", unit="step",
               disable=not progress)
    losses = []
    for (s_i, _), inputs in zip(batches, bar):
        losses.append(trainee.step(inputs))
        schedule.step()
        state["step"] += 1
        state["losses"].append({"step": state["step"], "loss": losses[-1], "set": sets[s_i].data.name})
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    state["seconds"] += time.time() - t0
    state["epoch"] += 1
    return float(np.mean(losses)) if losses else float("nan")


def select_on_dev(trainee: Trainee, sets: list[TrainingSet], state: dict, out: Path) -> float | None:
    """Score dev; keep the module in `out/best` when it is the best so far, else count a dev score without gain."""
    score = dev_ndcg(trainee.encode, sets)
    state["dev"].append({"epoch": state["epoch"], "dev_ndcg@10": score})
    if score is None or state["best"] is None or score > state["best"]:
        state.update(best=score, best_epoch=state["epoch"], bad_epochs=0)
        trainee.save(out / "best", {"epoch": state["epoch"], "dev_ndcg@10": score})
    else:
        state["bad_epochs"] += 1
    return score


def fit(trainee: Trainee, schedule, sets: list[TrainingSet], cfg: TrainConfig, state: dict, out: Path,
        progress: bool = True, desc: str = "epoch", checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Epochs from `state` (fresh, or a resumed checkpoint's) until `cfg.epochs` or `cfg.patience` dev scores
    without gain; dev is scored every `cfg.dev_every` epochs and after the last; `checkpoint(state)` after each."""
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        loss = run_epoch(trainee, schedule, sets, cfg, state, progress, desc)
        if state["epoch"] % cfg.dev_every == 0 or state["epoch"] == cfg.epochs:
            score = select_on_dev(trainee, sets, state, out)
            log.info(f"{out.name} {desc} {state['epoch']}: loss {loss:.4f}, dev nDCG@10 "
                     f"{score if score is None else round(score, 4)}")
        else:
            log.info(f"{out.name} {desc} {state['epoch']}: loss {loss:.4f}")
        if checkpoint is not None:
            checkpoint(state)
    return state


def write_training_png(out: Path, losses: list[float], loss_label: str, max_window: int,
                       dev_panel: Callable[[object], None]) -> None:
    """OUT/training.png of a trainer over stored states (the span reader, the reranker): left, the loss per step as
    a running mean of at most `max_window` steps; right, what `dev_panel(axes)` draws (its dev curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    w = max(1, min(len(losses) // 20, max_window))
    if losses:
        a.plot(np.arange(w, len(losses) + 1), np.convolve(losses, np.ones(w) / w, mode="valid"))
    a.set(xlabel="step", ylabel=loss_label, title=f"training loss (mean of {w})")
    dev_panel(b)
    fig.tight_layout()
    atomic_file(Path(out) / "training.png", lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
