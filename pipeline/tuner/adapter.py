"""The adapter baseline (issue 26): the reviewers' "what if we simply insert adapters and only update them?".

LoRA adapters (the `peft` library) on the attention and MLP projections of the LLM's blocks up to the U-layer; the
U-layer's states, mean-pooled (the sink left out) after a LayerNorm, go through a linear head, as pooled-linear
reads the stored layer. The same training pairs, hard negatives, loss, batch size and dev selection as the tuners
(pipeline/tuner/train.py), but gradients run through the LLM: every step costs its forward and backward, so the adapter
cannot train from the activation stores. It is the one variant that does not. Saved as safetensors holding the
adapter's and the head's weights only; the LLM's stay the preset's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..activations.extract import texts_of
from ..activations.llm import FrozenLLM
from ..common.atomic import atomic_dir, atomic_file
from ..common.batching import length_buckets
from ..common.config import Template, TrainConfig
from ..common.errors import ConfigError
from ..common.metrics import evaluate
from ..common.pooling import mean_pool
from ..common.precision import autocast
from ..data.beir import Prepared
from ..retrieval.index import build_index, retrieve, save_index
from .train import batch_layout, contrastive_loss, epoch_batches, warmup_linear_decay
from .training_sets import TrainingSet

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class AdapterConfig:
    """What the adapter is: the LLM, the layer it reads (its blocks up to it carry LoRA), LoRA's rank and scale,
    the head. `query_max_length` / `passage_max_length` and `template` are how texts are written, as the stores'."""

    model: str
    layer: int  # the U-layer: blocks 1..layer carry adapters, and this layer's states are pooled
    rank: int = 8
    alpha: int = 16
    lora_dropout: float = 0.05
    out_dim: int = 256
    temperature: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    query_max_length: int = 64
    passage_max_length: int = 256
    template: dict = field(default_factory=lambda: asdict(Template()))

    def __post_init__(self):
        if self.layer < 1:
            raise ConfigError(f"adapter layer must be 1 or deeper (a block to adapt), not {self.layer}")
        if self.rank < 1:
            raise ConfigError(f"adapter rank must be positive, not {self.rank}")


class Adapter(nn.Module):
    """The frozen LLM cut after `cfg.layer`, LoRA on its blocks, mean pooling and a linear head."""

    def __init__(self, cfg: AdapterConfig, device: str = "cpu"):
        from peft import LoraConfig, get_peft_model

        super().__init__()
        self.cfg = cfg
        self.llm = FrozenLLM(cfg.model, max_layer=cfg.layer, device=device, dtype=torch.float32)
        # the projections of blocks 0..layer-1 (whose outputs are layers 1..layer), as one regex over module names
        # (peft's layers_to_transform expects a prefix before `layers.`, which a bare decoder's names lack)
        blocks = "|".join(map(str, range(cfg.layer)))
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=rf"layers\.({blocks})\..*\.({'|'.join(cfg.targets)})")
        self.body = get_peft_model(self.llm.model, lora)
        self.norm = nn.LayerNorm(self.llm.hidden_size)
        self.head = nn.Linear(self.llm.hidden_size, cfg.out_dim)
        self.to(device)

    def forward(self, token_ids: list[list[int]]) -> torch.Tensor:
        """Token ids of a batch -> [B, out_dim] unit vectors (float32)."""
        ids, mask = self.llm.pad(token_ids)
        states = self.body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # layer U
        pooled = mean_pool(self.norm(states.float()), mask, self.llm.attention_sink)
        return F.normalize(self.head(pooled).float(), dim=-1)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training changes, and all a saved adapter holds: LoRA's matrices, the LayerNorm and the head."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if "lora_" in k or k.startswith(("norm.", "head."))}

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def save(self, folder: Path, extra: dict | None = None) -> None:
        def write(tmp: Path) -> None:
            save_file(self.trained_state(), tmp / "adapter.safetensors")
            (tmp / "adapter.json").write_text(json.dumps({"config": asdict(self.cfg), **(extra or {})}, indent=1))
        atomic_dir(Path(folder), write)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> Adapter:
        meta = json.loads((Path(folder) / "adapter.json").read_text())
        adapter = cls(AdapterConfig(**meta["config"]), device)
        missing = adapter.load_state_dict(load_file(Path(folder) / "adapter.safetensors"), strict=False)
        if missing.unexpected_keys:
            raise ConfigError(f"{folder}: unexpected weights {missing.unexpected_keys[:3]}")
        return adapter.eval()

    @torch.inference_mode()
    def encode(self, texts: list[str], max_length: int, bf16: bool = True, batch_tokens: int = 4096,
               desc: str = "adapter", progress: bool = True) -> np.ndarray:
        """[N, out_dim] vectors of already-templated texts, length-bucketed, under bf16 autocast where native."""
        was_training = self.training
        self.eval()
        token_ids, _ = self.llm.tokenize(texts, max_length)
        out = np.zeros((len(texts), self.cfg.out_dim), dtype=np.float32)
        with tqdm(total=len(texts), unit="text", desc=desc, disable=not progress) as bar:
            for idx in length_buckets([len(t) for t in token_ids], batch_tokens):
                with autocast(self.llm.device, bf16):
                    out[idx] = self([token_ids[i] for i in idx]).float().cpu().numpy()
                bar.update(len(idx))
        self.train(was_training)
        return out


def tokenized(adapter: Adapter, ds: Prepared) -> tuple[dict, dict]:
    """Every query's and passage's token ids, written with the adapter's template (as the stores' texts are)."""
    template, cfg = Template(**adapter.cfg.template), adapter.cfg
    out = []
    for kind, length in (("queries", cfg.query_max_length), ("corpus", cfg.passage_max_length)):
        ids, texts = texts_of(ds, kind, template)
        out.append(dict(zip(ids, adapter.llm.tokenize(texts, length)[0])))
    return out[0], out[1]


def encode_set(adapter: Adapter, ds: Prepared, qids: list[str], bf16: bool = True) -> tuple[list[str], np.ndarray,
                                                                                          np.ndarray]:
    """The set's corpus ids, its passages' vectors and the `qids` queries' vectors, written with the adapter's
    template and encoded online (no store holds an adapted LLM's states)."""
    template, cfg = Template(**adapter.cfg.template), adapter.cfg
    dids, passages = texts_of(ds, "corpus", template)
    corpus = adapter.encode(passages, cfg.passage_max_length, bf16, desc=f"adapter {ds.name} corpus")
    query_text = dict(zip(*texts_of(ds, "queries", template)))
    queries = adapter.encode([query_text[q] for q in qids], cfg.query_max_length, bf16, progress=False)
    return dids, corpus, queries


def adapter_run(adapter: Adapter, ds: Prepared, qids: list[str], bf16: bool = True, k: int = 100) -> dict:
    """The adapter's TREC run of `qids` over the set's whole corpus (exact inner-product search)."""
    dids, corpus, queries = encode_set(adapter, ds, qids, bf16)
    return retrieve(build_index(corpus, use_gpu=False), dids, qids, queries, k)


def dev_ndcg(adapter: Adapter, sets: list[TrainingSet], bf16: bool) -> float | None:
    """Mean dev nDCG@10 over the sets with a dev split, as the tuners are selected."""
    scores = [evaluate(adapter_run(adapter, ts.data, list(ts.dev_qrels), bf16), ts.dev_qrels)["nDCG@10"]
              for ts in sets if ts.dev_qrels]
    return float(np.mean(scores)) if scores else None


def adapter_step(adapter: Adapter, opt, texts: tuple[dict, dict], batch, amp, clip: float) -> float:
    """One optimizer step: the batch's queries and documents through the LLM with its adapters (forward and
    backward), the tuners' InfoNCE; returns the loss."""
    qids, docs, targets, false_neg = batch_layout(batch)
    queries, corpus = texts
    with amp:
        loss = contrastive_loss(adapter([queries[q] for q in qids]), adapter([corpus[d] for d in docs]),
                                targets, false_neg, 1.0 / adapter.cfg.temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in adapter.parameters() if p.requires_grad], clip)
    opt.step()
    return float(loss.detach())


def train_adapter(sets: list[TrainingSet], cfg: AdapterConfig, train_cfg: TrainConfig, out: Path,
                  device: str = "cpu", progress: bool = True) -> dict:
    """Train the adapter on the sets' training pairs (the tuners' batches, loss, schedule and dev selection; the
    step budget is `train_cfg.max_steps_per_epoch`) into `out` (best/, train.json). No checkpoint: a killed run
    starts again."""
    out = Path(out)
    torch.manual_seed(train_cfg.seed)
    adapter = Adapter(cfg, device)
    texts = [tokenized(adapter, ts.data) for ts in sets]
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=train_cfg.lr,
                            weight_decay=train_cfg.weight_decay)
    total = max(1, len(epoch_batches(sets, train_cfg, 0)) * train_cfg.epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_linear_decay, total=total,
                                                              warmup=train_cfg.warmup))
    amp = autocast(device, train_cfg.bf16)
    state = {"step": 0, "seconds": 0.0, "losses": [], "dev": [], "best": None, "best_epoch": None}
    for epoch in range(1, train_cfg.epochs + 1):
        torch.manual_seed(train_cfg.seed * 7919 + epoch - 1)  # dropout of this epoch, as the tuners'
        adapter.train()
        t0 = time.time()
        for s_i, batch in tqdm(epoch_batches(sets, train_cfg, epoch - 1), unit="step", disable=not progress,
                               desc=f"adapter epoch {epoch}/{train_cfg.epochs}"):
            loss = adapter_step(adapter, opt, texts[s_i], batch, amp, train_cfg.clip)
            schedule.step()
            state["step"] += 1
            state["losses"].append({"step": state["step"], "loss": loss, "set": sets[s_i].data.name})
        state["seconds"] += time.time() - t0
        if epoch % train_cfg.dev_every == 0 or epoch == train_cfg.epochs:
            score = dev_ndcg(adapter, sets, train_cfg.bf16)
            state["dev"].append({"epoch": epoch, "dev_ndcg@10": score})
            if score is None or state["best"] is None or score > state["best"]:
                state.update(best=score, best_epoch=epoch)
                adapter.save(out / "best", {"epoch": epoch, "dev_ndcg@10": score})
    summary = {"variant": "adapter", "trainable_parameters": adapter.trainable_parameters(),
               "steps": state["step"], "train_seconds": round(state["seconds"], 1),
               "seconds_per_step": round(state["seconds"] / max(1, state["step"]), 3),
               "best_epoch": state["best_epoch"], "dev_ndcg@10": state["best"], "adapter": asdict(cfg),
               "train": asdict(train_cfg), "losses": state["losses"], "dev": state["dev"]}
    atomic_file(out / "train.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    return summary


def index_adapter(adapter_dir: Path, ds: Prepared, qids: list[str], out: Path, run_path: Path, system: str,
                  kind: str = "flat", k: int = 100, bf16: bool = True) -> dict:
    """As `index_dataset` for a tuner, but the corpus is encoded online (the adapter changes the LLM's states, so
    no store holds them): vectors, FAISS index, meta.json (what `lmort search` reads) and a TREC run."""
    adapter = Adapter.load(adapter_dir)
    cfg = adapter.cfg
    t0 = time.time()
    dids, vectors, queries = encode_set(adapter, ds, qids, bf16)
    return save_index(vectors, dids, queries, qids, out, run_path, system, kind=kind, k=k, meta={
        "adapter": str(adapter_dir), "data": ds.name, "model": cfg.model, "template": cfg.template,
        "query_max_length": cfg.query_max_length, "encode_seconds": round(time.time() - t0, 1), "bf16": bf16})
