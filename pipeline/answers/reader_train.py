"""Training the span reader purely from stage one's stores (`lmort train-reader`), as the tuner is trained: the
LLM is never loaded. Train questions (dev carved from train) teach it; dev EM/F1 selects the checkpoint; the
test questions are never read here.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..activations.store import ActivationStore, check_compatible
from ..common.atomic import atomic_file
from ..common.precision import autocast, feed_dtype
from ..data.beir import Prepared
from ..tuner.checkpoints import resume_or_start, save_checkpoint
from ..tuner.loop import optimizer_step, warmup_linear_decay, write_training_png
from .reader_data import Passages, SpanExample, gather, length_batches, load_layers
from .span_reader import ReaderConfig, SpanReader, best_spans, span_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderTrainConfig:
    """The `reader:` training knobs of the rag configuration (these defaults are its values; a test holds them)."""

    batch_size: int = 32
    epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    clip: float = 1.0
    max_questions: int | None = None  # the training budget: a seeded sample of this many train questions
    evals_per_epoch: int = 4  # dev EM/F1 this many times an epoch: the curve against questions seen
    dev_questions: int | None = 2000  # a seeded sample of dev questions that selects the checkpoint
    seed: int = 0
    bf16: bool = True
    memory_gb: float = 10.0  # stored layers up to this size are loaded into memory; the rest stream


@dataclass
class ReaderInputs:
    """Everything a training run reads: the set, its two stores, the passages' offsets, labelled examples."""

    ds: Prepared
    queries: ActivationStore
    corpus: ActivationStore
    passages: Passages
    train: list[SpanExample]
    dev: list[str]  # dev question ids (scored on their gold paragraph with every reference answer)
    answers: dict[str, list[str]]
    counts: dict  # the labels' counts per split (located, not found, past the window)


def _states(inputs: ReaderInputs, qids: list[str], doc_ids: list[str], layers: list[int], device, feed):
    p, p_mask = gather(inputs.corpus, doc_ids, layers, feed, "passage")
    q, q_mask = gather(inputs.queries, qids, layers, feed, "question")
    to = {"device": device}
    return ({k: v.to(**to) for k, v in p.items()}, p_mask.to(**to), {k: v.to(**to) for k, v in q.items()},
            q_mask.to(**to))


@torch.inference_mode()
def predict(reader: SpanReader, inputs: ReaderInputs, qids: list[str], doc_ids: list[str], bf16: bool = True,
            batch_size: int = 64) -> list[tuple[str, float]]:
    """The best span's text and score for each (question, passage) pair, read from the stores."""
    device = next(reader.parameters()).device
    feed = feed_dtype(device, bf16)
    lengths = [int(inputs.corpus.lengths[inputs.corpus.row[d]]) if d in inputs.corpus.row else 0 for d in doc_ids]
    out: list[tuple[str, float]] = [("", 0.0)] * len(qids)
    for idx in length_batches(lengths, batch_size, None):
        states = _states(inputs, [qids[i] for i in idx], [doc_ids[i] for i in idx], reader.cfg.layers, device, feed)
        with autocast(device, bf16):
            start, end = reader(*states)
        s, e, score = best_spans(start, end, reader.cfg.max_answer_tokens)
        for row, i in enumerate(idx):
            out[i] = (inputs.passages[doc_ids[i]].span_text(int(s[row]), int(e[row])), float(score[row]))
    return out


def dev_scores(reader: SpanReader, inputs: ReaderInputs, bf16: bool = True) -> dict:
    """EM and F1 on the dev questions, each read from its gold paragraph (every dev question counts, even one whose
    answer lies past the stored window)."""
    from .reader import answer_scores

    reader.eval()
    gold = [next(d for d, g in inputs.ds.qrels["dev"][q].items() if g > 0) for q in inputs.dev]
    preds = predict(reader, inputs, inputs.dev, gold, bf16)
    scores = [answer_scores(text, inputs.answers[q]) for (text, _), q in zip(preds, inputs.dev)]
    reader.train()
    return {"em": float(np.mean([s["em"] for s in scores])), "f1": float(np.mean([s["f1"] for s in scores]))}


def _step(reader, opt, schedule, inputs: ReaderInputs, batch: list[SpanExample], cfg: ReaderTrainConfig,
          device) -> float:
    feed = feed_dtype(device, cfg.bf16)
    states = _states(inputs, [x.qid for x in batch], [x.doc_id for x in batch], reader.cfg.layers, device, feed)
    gold_start = torch.tensor([x.start for x in batch], device=device)
    gold_end = torch.tensor([x.end for x in batch], device=device)
    with autocast(device, cfg.bf16):
        start, end = reader(*states)
    loss = optimizer_step(reader, opt, span_loss(start, end, gold_start, gold_end), cfg.clip)
    schedule.step()
    return loss


def train_reader(inputs: ReaderInputs, reader_cfg: ReaderConfig, cfg: ReaderTrainConfig, out: Path,
                 progress: bool = True) -> dict:
    """Train into `out` (best/, reader.json, the dev curve): dev EM/F1 `evals_per_epoch` times an epoch, the best
    F1 kept. A killed run resumes from its last dev evaluation."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stores = check_compatible([inputs.queries, inputs.corpus])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    streamed = load_layers([inputs.queries, inputs.corpus], reader_cfg.layers, cfg.memory_gb)
    if streamed:
        log.info(f"streaming past the {cfg.memory_gb} GB budget: {', '.join(streamed)}")
    torch.manual_seed(cfg.seed)
    reader = SpanReader(reader_cfg).to(device).train()
    opt = torch.optim.AdamW(reader.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = [int(inputs.corpus.lengths[inputs.corpus.row[x.doc_id]]) for x in inputs.train]
    per_epoch = len(length_batches(lengths, cfg.batch_size, None))
    total = per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_linear_decay, total=total, warmup=cfg.warmup))
    setup = {"reader": reader_cfg.to_dict(), "train": asdict(cfg), "stores": stores,
             "train_questions": len(inputs.train), "dev_questions": len(inputs.dev)}
    fresh = {"step": 0, "seen": 0, "best": None, "curve": [], "losses": [], "seconds": 0.0, "setup": setup}
    state = resume_or_start(reader, opt, schedule, setup, out, fresh)
    every = max(1, per_epoch // cfg.evals_per_epoch)
    with tqdm(total=total, initial=state["step"], unit="step", desc="train reader", disable=not progress) as bar:
        while state["step"] < total:
            epoch, within = divmod(state["step"], per_epoch)
            batches = length_batches(lengths, cfg.batch_size, np.random.default_rng(cfg.seed + epoch))
            t0 = time.time()
            for b in batches[within:]:
                loss = _step(reader, opt, schedule, inputs, [inputs.train[i] for i in b], cfg, device)
                state["step"] += 1
                state["seen"] += len(b)
                state["losses"].append({"step": state["step"], "loss": round(loss, 4)})
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}")
                if state["step"] % every == 0 or state["step"] == total or state["step"] % per_epoch == 0:
                    break
            state["seconds"] += time.time() - t0
            _evaluate(reader, inputs, cfg, state, out, stores)
            save_checkpoint(reader, opt, schedule, state, out / "checkpoint")
    summary = {"parameters": reader.num_parameters(), "steps": state["step"], "questions_seen": state["seen"],
               "train_seconds": round(state["seconds"], 1), "best": state["best"], "curve": state["curve"],
               "labels": inputs.counts, "reader": reader_cfg.to_dict(), "train": asdict(cfg),
               "questions_per_second": round(state["seen"] / max(state["seconds"], 1e-9), 1)}
    write_reader_logs(state, summary, out)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return summary


def _evaluate(reader, inputs: ReaderInputs, cfg: ReaderTrainConfig, state: dict, out: Path, stores: dict) -> None:
    scores = dev_scores(reader, inputs, cfg.bf16)
    recent = [x["loss"] for x in state["losses"][-50:]]
    point = {"step": state["step"], "questions_seen": state["seen"], "train_seconds": round(state["seconds"], 1),
             "loss": float(np.mean(recent)) if recent else None, "dev_em": scores["em"], "dev_f1": scores["f1"]}
    state["curve"].append(point)
    log.info(f"reader after {state['seen']} questions: dev EM {scores['em']:.3f}, F1 {scores['f1']:.3f}")
    if state["best"] is None or scores["f1"] > state["best"]["dev_f1"]:
        state["best"] = point
        reader.save(out / "best", {"stores": stores, "dev": point, "labels": inputs.counts})


def write_reader_logs(state: dict, summary: dict, out: Path) -> None:
    """train.json and training.png: the loss per step and dev EM/F1 against the training questions seen."""
    atomic_file(out / "train.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))

    def dev_panel(b) -> None:
        seen = [x["questions_seen"] for x in state["curve"]]
        b.plot(seen, [x["dev_f1"] for x in state["curve"]], "o-", label="dev F1")
        b.plot(seen, [x["dev_em"] for x in state["curve"]], "s-", label="dev EM")
        b.set(xlabel="training questions seen", ylabel="gold paragraph, dev", title="the reader on dev")
        b.legend()
    write_training_png(out, [x["loss"] for x in state["losses"]], "span cross-entropy", 100, dev_panel)


def open_reader_inputs(stores: Path, data: str, answers_path: Path, cfg: ReaderTrainConfig) -> ReaderInputs:
    """The set's two stores, its passages (tokenised under the stores' template, checked against them), the train
    questions' labels (a seeded sample of `cfg.max_questions`) and a seeded sample of dev questions."""
    from transformers import AutoTokenizer

    from ..activations.llm import resolve_model
    from ..activations.store import open_stores
    from ..common.config import Template
    from ..data.answers import read_answers, sample_questions
    from ..data.prepare import ensure_prepared
    from .reader_data import span_examples

    ds = ensure_prepared(data)
    queries, corpus = open_stores(stores, ds.name)
    check_compatible([queries, corpus])
    fp = corpus.fingerprint
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(fp["model"])[0])
    passages = Passages(ds, tokenizer, Template(**fp["template"]), fp["max_length"], corpus)
    answers = read_answers(answers_path)
    if "dev" not in ds.qrels:
        raise FileNotFoundError(f"{ds.folder}: no dev split to select the reader on (`lmort prepare` carves one)")
    train_q = sample_questions(list(ds.qrels.get("train", {})), cfg.max_questions or 10**9, cfg.seed)
    train, train_counts = span_examples(ds, "train", answers, passages, train_q)
    dev_q = sample_questions([q for q in ds.qrels["dev"] if q in answers], cfg.dev_questions or 10**9, cfg.seed)
    _, dev_counts = span_examples(ds, "dev", answers, passages, dev_q)
    for split, c in (("train", train_counts), ("dev", dev_counts)):
        log.info(f"{ds.name} {split}: {c['located']} of {c['questions']} answers located; {c['not_found']} not in "
                 f"the paragraph, {c['past_window']} past the stored {fp['max_length']} tokens")
    if not train:
        raise FileNotFoundError(f"{answers_path}: no train answer of {ds.name} could be located in its paragraph")
    return ReaderInputs(ds, queries, corpus, passages, train, dev_q, answers,
                        {"train": train_counts, "dev": dev_counts})


def _reader_section(params: dict) -> tuple[dict, set[str], set[str]]:
    from dataclasses import fields

    from ..common.errors import ConfigError

    section = dict(params.get("reader") or {})
    model_keys = {f.name for f in fields(ReaderConfig)} - {"llm_width", "attention_sink"}
    train_keys = {f.name for f in fields(ReaderTrainConfig)}
    unknown = set(section) - model_keys - train_keys
    if unknown:
        raise ConfigError(f"unknown reader parameters: {sorted(unknown)}")
    return section, model_keys, train_keys


def reader_train_config(params: dict) -> ReaderTrainConfig:
    """The `reader:` section's training knobs."""
    section, _, train_keys = _reader_section(params)
    return ReaderTrainConfig(**{k: v for k, v in section.items() if k in train_keys})


def reader_model_config(params: dict, stored_layers: list[int], llm_width: int, attention_sink: bool) -> ReaderConfig:
    """The `reader:` section's model knobs; `layers`: `all` (every stored layer, mixed) or stored layers."""
    from ..common.errors import ConfigError

    section, model_keys, _ = _reader_section(params)
    layers = section.pop("layers", "all")
    if layers == "all":
        chosen = list(stored_layers)
    else:
        chosen = [int(x) for x in (str(layers).split(",") if isinstance(layers, (str, int)) else layers)]
    missing = sorted(set(chosen) - set(stored_layers))
    if missing:
        raise ConfigError(f"reader.layers asks for {missing}, but the stores hold layers {stored_layers}")
    return ReaderConfig(llm_width=llm_width, layers=chosen, attention_sink=attention_sink,
                        **{k: v for k, v in section.items() if k in model_keys})
