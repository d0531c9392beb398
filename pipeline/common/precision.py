"""Numeric precision of the forward passes: bfloat16 where the hardware computes it natively, float32 elsewhere.

CPUs with AVX-512 BF16 or AMX run a bfloat16 matmul several times faster than a float32 one (about 1.8 against
0.3 TFLOP/s on the project's 2-core machines); without those units bfloat16 is emulated and slower than float32.
So "auto" means bfloat16 on a GPU that supports it or on such a CPU, float32 otherwise. `LMORT_BF16=0` (or 1)
overrides the detection, e.g. to exercise the float32 fallback on a machine that has the units.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

import torch

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes bfloat16 matmuls in hardware (not emulated)."""
    forced = os.environ.get("LMORT_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def resolve_compute_dtype(choice: str, device: str | torch.device = "cpu") -> torch.dtype:
    """'auto' -> bfloat16 where native, else float32; 'float32' and 'bfloat16' are taken as asked."""
    if choice not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, not {choice!r}")
    if choice == "auto":
        return torch.bfloat16 if bf16_native(device) else torch.float32
    return getattr(torch, choice)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def feed_dtype(device: str | torch.device, enabled: bool = True) -> torch.dtype:
    """The dtype stored states are handed to the tuner in: bfloat16 where `autocast` is on (its matmuls and layer
    norms take bfloat16 directly: no float32 copy of the 576-wide inputs, no cast back), float32 elsewhere."""
    return torch.bfloat16 if enabled and bf16_native(device) else torch.float32


def autocast(device: str | torch.device, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast for the tuner's matmuls where the device computes bfloat16 natively (a no-op elsewhere or
    when disabled). Reductions and the loss stay in float32: autocast keeps them there, and callers cast scores."""
    kind = torch.device(device).type
    if enabled and bf16_native(device):
        return torch.autocast(kind, dtype=torch.bfloat16)
    return nullcontext()
