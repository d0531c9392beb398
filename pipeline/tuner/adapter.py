"""The adapter baseline's model: the reviewers' "what if we simply insert adapters and only update them?".

LoRA adapters (the `peft` library) on the attention and MLP projections of the LLM's blocks up to the U-layer; the
U-layer's states, mean-pooled (the sink left out) after a LayerNorm, go through a linear head, as pooled-linear
reads the stored layer. Trained by adapter_train.py in the tuners' loop (loop.py), but gradients run through the LLM:
every step costs its forward and backward, so the adapter cannot train from the activation stores. It is the one
variant that does not. Saved as safetensors holding the adapter's and the head's weights only; the LLM's stay the
preset's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..activations.llm import FrozenLLM
from ..common.batching import length_buckets
from ..common.config import Template
from ..common.errors import ConfigError
from ..common.pooling import mean_pool
from ..common.precision import autocast
from ..common.weights import save_weights

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
        save_weights(folder, self.trained_state(), "adapter.json", {"config": asdict(self.cfg), **(extra or {})},
                     "adapter.safetensors")

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


