"""Training the reranker purely from stage one's stores (`lmort train-reranker`), as the tuner and the span reader
are trained: the LLM is never loaded, and no test split is read.

Batches are the tuner's (tuner/loop.py `epoch_batches`: one training set a batch, each query with its positive and
BM25 hard negatives). The loss is listwise: a softmax over every passage of the batch (the query's positive, its
hard negatives, and, with `in_batch`, the other queries' passages; documents also judged relevant to the query are
masked). Dev: nDCG@10 of BM25's top `dev_depth` reranked, for every training set with a dev split (these select the
checkpoint) and for the zero-shot dev collections (reported in the curve; `select_on: all` selects on them too).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..activations.store import check_compatible
from ..common.atomic import atomic_file
from ..common.config import TrainConfig
from ..common.metrics import Run, mean_or_none
from ..common.precision import autocast, feed_dtype
from ..data.beir import Prepared
from ..retrieval.baselines import bm25_run
from ..retrieval.fusion import mean_ndcg
from ..tuner.checkpoints import resume_or_start, save_checkpoint
from ..tuner.loop import batch_layout, epoch_batches, optimizer_step, warmup_linear_decay, write_training_png
from ..tuner.train import load_within_budget
from ..tuner.training_sets import TrainingSet
from .rerank import EncodedPassages, combine, rerank_scores
from .reranker import Reranker, RerankerConfig
from .teacher import TEACHERS, Targets, teacher_targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankerTrainConfig:
    """The `reranker:` section's training knobs (these defaults are the default configuration's; a test holds it)."""

    batch_size: int = 16
    negatives: int = 3  # BM25 hard negatives per query in its softmax
    in_batch: tuple[str, ...] = ("late",)  # designs whose softmax adds the batch's other passages (late: nearly free;
    # cross: every query reads every passage of the batch, batch_size times the cost)
    epochs: int = 3
    max_steps_per_epoch: int | None = None  # a step budget for large mixes (None: every batch the quotas fill)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    clip: float = 1.0
    mix_alpha: float = 0.5  # batches per training set, as the tuner's (loop.py set_quotas)
    evals: int = 4  # dev scorings over the run: the curve against queries seen
    dev_depth: int = 30  # BM25 candidates reranked in the dev scoring
    dev_queries: int | None = None  # a seeded sample of each dev split's queries (None: all; squad's dev is 8.8k)
    select_on: str = "in-domain"  # in-domain: the training sets' dev splits choose; all: the zero-shot dev too
    teacher: str | None = None  # distillation (teacher.py): "minilm+bm25", the fused scores' margins as targets
    teacher_weight: float = 0.6  # MiniLM's weight in the teacher's fusion (0.6: the default's choice on cacm)
    teacher_scale: float = 10.0  # the teacher's min-max margins in the reranker's logit units
    distill: float = 1.0  # the Margin-MSE term's weight beside the listwise cross-entropy
    seed: int = 0
    bf16: bool = True
    memory_gb: float = 8.0


@dataclass
class DevSet:
    """A dev split and BM25's candidates on it: what the checkpoint is scored on."""

    ds: Prepared
    split: str
    queries: object  # ActivationStore
    corpus: object
    bm25: Run
    in_domain: bool
    qrels: dict  # the split's judgements of the queries scored (all of them, or the seeded sample)

    @property
    def name(self) -> str:
        return f"{self.ds.name}/{self.split}"


def dev_sets(train: list[TrainingSet], zero_shot: list[TrainingSet], split: str, depth: int,
             max_queries: int | None = None, seed: int = 0) -> list[DevSet]:
    """The training sets' dev splits and the zero-shot dev collections' `split`, each with BM25's top `depth`;
    with `max_queries`, a seeded sample of each split's queries (the same sample at every scoring)."""
    out = []
    for sets, in_domain in ((train, True), (zero_shot, False)):
        for ts in sets:
            qrels = ts.dev_qrels if in_domain else ts.data.qrels.get(split)
            if not qrels:
                continue
            ids = sorted(qrels)
            if max_queries is not None and len(ids) > max_queries:
                g = torch.Generator().manual_seed(seed)
                ids = sorted(ids[i] for i in torch.randperm(len(ids), generator=g)[:max_queries].tolist())
            out.append(DevSet(ts.data, "dev" if in_domain else split, ts.queries, ts.corpus,
                              bm25_run(ts.data, ids, depth), in_domain, {q: qrels[q] for q in ids}))
    return out


def dev_scores(reranker: Reranker, sets: list[DevSet], cfg: RerankerTrainConfig) -> dict[str, float]:
    """nDCG@10 of each dev set's BM25 candidates reranked (the reranker's score alone)."""
    reranker.eval()
    out = {}
    for dev in sets:
        passages = EncodedPassages(reranker, dev.corpus, cfg.bf16)
        scores = rerank_scores(reranker, dev.queries, passages, dev.bm25, cfg.dev_depth, cfg.bf16)
        out[dev.name] = mean_ndcg(combine(dev.bm25, scores, cfg.dev_depth, 1.0), dev.qrels)
    reranker.train()
    return out


def listwise_loss(reranker: Reranker, ts: TrainingSet, batch, cfg: RerankerTrainConfig, device,
                  teacher: Run | None = None) -> torch.Tensor:
    """Softmax cross-entropy of each query's positive against its hard negatives (and, with `in_batch`, every
    other passage of the batch), false negatives masked; with a `teacher` (query -> document -> score), plus
    `distill` times the Margin-MSE of the query's positive-minus-negative margins against the teacher's."""
    qids, docs, targets, false_neg = batch_layout(batch)
    positives = targets
    feed = feed_dtype(device, cfg.bf16)
    qs, qm = ts.queries.batch(qids, reranker.cfg.layers, feed)
    ps, pm = ts.corpus.batch(docs, reranker.cfg.layers, feed)
    if reranker.cfg.design in cfg.in_batch:
        pairs = None
    else:  # each query's own group (positive first), padded by repeating the positive, the pads masked
        ends = [*targets.tolist()[1:], len(docs)]
        groups = [list(range(a, b)) for a, b in zip(targets.tolist(), ends)]
        n = max(len(g) for g in groups)
        pairs = torch.tensor([g + [g[0]] * (n - len(g)) for g in groups])
        pad = torch.tensor([[j >= len(g) for j in range(n)] for g in groups])
        false_neg, targets = false_neg.gather(1, pairs) | pad, torch.zeros_like(targets)
    with autocast(device, cfg.bf16):
        q, q_keep = reranker.encode({k: v.to(device) for k, v in qs.items()}, qm.to(device))
        p, p_keep = reranker.encode({k: v.to(device) for k, v in ps.items()}, pm.to(device))
        scores = reranker.score(q, q_keep, p, p_keep, None if pairs is None else pairs.to(device))
    loss = F.cross_entropy(scores.masked_fill(false_neg.to(device), float("-inf")), targets.to(device))
    if teacher is None:
        return loss
    start = positives if pairs is None else torch.zeros_like(positives)  # each query's positive column
    return loss + cfg.distill * margin_mse(scores.float(), start, batch, teacher, cfg.teacher_scale)


def margin_mse(scores: torch.Tensor, start: torch.Tensor, batch, teacher: Run, scale: float) -> torch.Tensor:
    """Mean squared difference between the student's margins (positive minus each of the query's own hard
    negatives, which follow the positive's column `start[i]`) and `scale` times the teacher's."""
    rows, pos, neg, target = [], [], [], []
    for i, (qid, p, negs, _) in enumerate(batch):
        for j, n in enumerate(negs):
            rows.append(i), pos.append(int(start[i])), neg.append(int(start[i]) + 1 + j)
            target.append(scale * (teacher[qid][p] - teacher[qid][n]))
    if not rows:
        return scores.sum() * 0.0
    rows_t, pos_t, neg_t = (torch.tensor(x, device=scores.device) for x in (rows, pos, neg))
    student = scores[rows_t, pos_t] - scores[rows_t, neg_t]
    return F.mse_loss(student, torch.tensor(target, device=scores.device, dtype=scores.dtype))


def _loop_config(cfg: RerankerTrainConfig) -> TrainConfig:
    """The tuner's batch recipe with the reranker's sizes (loop.py `epoch_batches` reads these fields)."""
    return replace(TrainConfig(), batch_size=cfg.batch_size, negatives=cfg.negatives, epochs=cfg.epochs,
                   seed=cfg.seed, mix_alpha=cfg.mix_alpha, max_steps_per_epoch=cfg.max_steps_per_epoch)


def _evaluate(reranker: Reranker, devs: list[DevSet], cfg: RerankerTrainConfig, state: dict, out: Path,
              stores: dict) -> None:
    scores = dev_scores(reranker, devs, cfg)
    chosen = [s for d, s in zip(devs, scores.values()) if d.in_domain or cfg.select_on == "all"]
    recent = [x["loss"] for x in state["losses"][-50:]]
    point = {"step": state["step"], "queries_seen": state["seen"], "train_seconds": round(state["seconds"], 1),
             "loss": float(np.mean(recent)) if recent else None, "dev": scores, "select": mean_or_none(chosen)}
    state["dev"].append(point)
    log.info(f"reranker after {state['seen']} queries: dev {json.dumps({k: round(v, 4) for k, v in scores.items()})}")
    if state["best"] is None or (point["select"] or 0) > (state["best"]["select"] or 0):
        state["best"] = point
        reranker.save(out / "best", {"stores": stores, "dev": point})


def train_reranker(sets: list[TrainingSet], devs: list[DevSet], model_cfg: RerankerConfig,
                   cfg: RerankerTrainConfig, out: Path, progress: bool = True, teacher: Targets | None = None) -> dict:
    """Train into `out` (best/, train.json, training.png, curve.md); dev is scored `cfg.evals` times (and after the
    last step), the best kept. A killed run resumes from its last dev scoring. `teacher`: distillation targets
    (teacher.py) for every pair the schedule shows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stores = check_compatible([s for x in [*sets, *devs] for s in (x.queries, x.corpus)])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    streamed = load_within_budget([*sets, *devs], model_cfg.layers, cfg.memory_gb, "cpu")
    if streamed:
        log.info(f"streaming {len(streamed)} store(s) past the {cfg.memory_gb} GB budget: {', '.join(streamed)}")
    torch.manual_seed(cfg.seed)
    reranker = Reranker(model_cfg).to(device).train()
    loop_cfg = _loop_config(cfg)
    per_epoch = len(epoch_batches(sets, loop_cfg, 0))
    total = per_epoch * cfg.epochs
    opt = torch.optim.AdamW(reranker.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_linear_decay(s, total, cfg.warmup))
    setup = {"reranker": model_cfg.to_dict(), "train": asdict(cfg), "stores": stores,
             "sets": [ts.data.name for ts in sets], "dev": [d.name for d in devs]}
    state = {"seen": 0, **resume_or_start(reranker, opt, schedule, setup, out)}
    every = max(1, -(-total // cfg.evals))  # the last scoring falls on the last step
    with tqdm(total=total, initial=state["step"], unit="step", desc="train reranker", disable=not progress) as bar:
        while state["step"] < total:
            _segment(reranker, opt, schedule, sets, loop_cfg, cfg, state, per_epoch, every, device, bar, teacher)
            _evaluate(reranker, devs, cfg, state, out, stores)
            save_checkpoint(reranker, opt, schedule, state, out / "checkpoint")
    summary = {"parameters": reranker.num_parameters(), "steps": state["step"], "queries_seen": state["seen"],
               "train_seconds": round(state["seconds"], 1), "best": state["best"], "curve": state["dev"],
               "reranker": model_cfg.to_dict(), "train": asdict(cfg),
               "queries_per_second": round(state["seen"] / max(state["seconds"], 1e-9), 1)}
    write_reranker_logs(state, summary, out)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return summary


def _segment(reranker, opt, schedule, sets, loop_cfg, cfg, state, per_epoch, every, device, bar, teacher) -> None:
    """Steps until the next dev scoring (every `every` steps, and the last). The segment seeds its own dropout and
    each epoch's batches are seeded, so a run resumed at a scoring repeats an uninterrupted one."""
    torch.manual_seed(cfg.seed * 7919 + state["step"])
    total = per_epoch * cfg.epochs
    batches: dict[int, list] = {}
    t0 = time.time()
    while state["step"] < total:
        epoch, within = divmod(state["step"], per_epoch)
        if epoch not in batches:
            batches = {epoch: epoch_batches(sets, loop_cfg, epoch)}
        s_i, batch = batches[epoch][within]
        targets = teacher[sets[s_i].data.name] if teacher else None
        loss = optimizer_step(reranker, opt, listwise_loss(reranker, sets[s_i], batch, cfg, device, targets), cfg.clip)
        schedule.step()
        state["step"] += 1
        state["seen"] += len(batch)
        state["losses"].append({"step": state["step"], "loss": round(loss, 4), "set": sets[s_i].data.name})
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}")
        if state["step"] % every == 0:
            break
    state["seconds"] += time.time() - t0


def curve_table(curve: list[dict]) -> str:
    """The dev curve as Markdown: one row per scoring, one column per dev set."""
    from ..common.tables import markdown_table

    names = list(curve[0]["dev"]) if curve else []
    rows = [{"queries seen": x["queries_seen"], "step": x["step"], "loss": x["loss"], **x["dev"],
             "selects on": x["select"]} for x in curve]
    return markdown_table(rows, ["queries seen", "step", "loss", *names, "selects on"], floatfmt=".4f")


def write_reranker_logs(state: dict, summary: dict, out: Path) -> None:
    """train.json, curve.md and training.png: the loss per step and dev nDCG@10 against the queries seen."""
    atomic_file(out / "train.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    atomic_file(out / "curve.md", lambda tmp: tmp.write_text(curve_table(state["dev"])))

    def dev_panel(b) -> None:
        seen = [x["queries_seen"] for x in state["dev"]]
        for name in (state["dev"][0]["dev"] if state["dev"] else {}):
            b.plot(seen, [x["dev"][name] for x in state["dev"]], "o-", label=name)
        b.set(xlabel="training queries seen", ylabel="nDCG@10, BM25 reranked", title="the reranker on dev")
        b.legend(fontsize=7)
    write_training_png(out, [x["loss"] for x in state["losses"]], "listwise cross-entropy", 50, dev_panel)


# ------------------------------------------------------------------ the configuration's `reranker:` section

@dataclass(frozen=True)
class RerankStageConfig:
    """The `reranker:` section's pipeline knobs: which designs are trained (dev keeps one), on which sets, and
    what `lmort rerank` reorders."""

    designs: tuple[str, ...] = ("cross", "late")
    train_sets: tuple[str, ...] = ()  # empty: the configuration's train_sets
    zero_shot_dev: tuple[str, ...] = ()  # empty: fusion.zero_shot_dev (scored in the curve; `select_on: all` uses it)
    first_stages: tuple[str, ...] = ("bm25", "lmort+bm25")  # the runs `lmort rerank` reorders (any system's run)
    depths: tuple[int, ...] = (10, 20, 50, 100)  # the candidates reranked, chosen on dev
    layers: str | tuple[int, ...] = "all"  # the stored layers the mix reads


def _split_section(params: dict) -> tuple[dict, dict, dict]:
    from dataclasses import fields

    from ..common.errors import ConfigError

    section = dict(params.get("reranker") or {})
    keys = [{f.name for f in fields(cls)} for cls in (RerankerConfig, RerankerTrainConfig, RerankStageConfig)]
    keys[0] -= {"llm_width", "layers", "attention_sink", "design"}
    unknown = set(section) - set().union(*keys)
    if unknown:
        raise ConfigError(f"unknown reranker parameters: {sorted(unknown)} (known: {sorted(set().union(*keys))})")
    return tuple({k: v for k, v in section.items() if k in known} for known in keys)


def rerank_stage_config(params: dict) -> RerankStageConfig:
    """The section's pipeline knobs, lists as tuples, the sets defaulting to the configuration's."""
    raw = _split_section(params)[2]
    cfg = RerankStageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    from ..common.config import section

    train = cfg.train_sets or tuple(s.strip() for s in str(params.get("train_sets", "")).split(",") if s.strip())
    return replace(cfg, train_sets=train, zero_shot_dev=cfg.zero_shot_dev or section(params, "fusion").zero_shot_dev)


def reranker_train_config(params: dict) -> RerankerTrainConfig:
    from ..common.errors import ConfigError

    raw = _split_section(params)[1]
    cfg = RerankerTrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if cfg.teacher not in (None, *TEACHERS):
        raise ConfigError(f"reranker.teacher must be null or one of {list(TEACHERS)}, not {cfg.teacher!r}")
    return cfg


def reranker_model_config(params: dict, design: str, stored_layers: list[int], llm_width: int,
                          attention_sink: bool) -> RerankerConfig:
    """One design's shape from the section; `layers`: `all` (every stored layer, mixed) or stored layers."""
    from ..common.errors import ConfigError

    layers = rerank_stage_config(params).layers
    chosen = list(stored_layers) if layers == "all" else [int(x) for x in (
        str(layers).split(",") if isinstance(layers, (str, int)) else layers)]
    missing = sorted(set(chosen) - set(stored_layers))
    if missing:
        raise ConfigError(f"reranker.layers asks for {missing}, but the stores hold layers {stored_layers}")
    return RerankerConfig(llm_width=llm_width, layers=chosen, design=design, attention_sink=attention_sink,
                          **_split_section(params)[0])


def train_designs(stores: Path, params: dict, out: Path, progress: bool = True) -> dict:
    """Every design of the `reranker:` section trained into OUT/<design>/ from the stores, and the one dev prefers
    (the mean dev nDCG@10 its selection reads) named in OUT/chosen.json."""
    from ..common.config import section
    from ..tuner.training_sets import open_training_sets

    stage, cfg = rerank_stage_config(params), reranker_train_config(params)
    sets = open_training_sets(stores, list(stage.train_sets))
    zero = open_training_sets(stores, list(stage.zero_shot_dev), pairs=False)
    devs = dev_sets(sets, zero, section(params, "fusion").zero_shot_split, cfg.dev_depth, cfg.dev_queries, cfg.seed)
    corpus = sets[0].corpus
    teacher = None
    if cfg.teacher:  # the same targets for every design, computed once
        schedule = [epoch_batches(sets, _loop_config(cfg), e) for e in range(cfg.epochs)]
        teacher = teacher_targets(sets, schedule, cfg.teacher_weight, Path(out), cfg.bf16, progress)
    summaries = {}
    for design in stage.designs:
        model_cfg = reranker_model_config(params, design, corpus.layers, corpus.width,
                                          bool(corpus.fingerprint.get("attention_sink")))
        summaries[design] = train_reranker(sets, devs, model_cfg, cfg, Path(out) / design, progress, teacher)
    chosen = max(stage.designs, key=lambda d: summaries[d]["best"]["select"] or 0)
    record = {"design": chosen, "selects_on": [d.name for d in devs if d.in_domain or cfg.select_on == "all"],
              "designs": {d: {"parameters": s["parameters"], "train_seconds": s["train_seconds"],
                              "best": s["best"]} for d, s in summaries.items()}}
    atomic_file(Path(out) / "chosen.json", lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return record
