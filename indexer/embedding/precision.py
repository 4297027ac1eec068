"""Which device and number format a model runs in: bf16 only where the hardware runs it natively.

Without bf16 instructions torch emulates the format, and the slowdown is no small tax: on a
2-core AMD EPYC with AVX2 only, TAEF2's encoder took 32 s in bf16 autocast against 0.58 s in fp32
for 24 photos at 64 px (55x), and an AMD Zen 3 ran the embedder ~7x slower. So every torch
autocast in the project (embedding, `train`'s latent encoding and training steps) asks here first.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

import torch

from indexer.errors import ConfigError


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True on CPUs with bf16 matrix instructions (Intel AMX or AVX512-BF16, Arm BF16).

    Without them torch emulates bf16 and runs several times slower than fp32 (the module docstring). A oneDNN
    ISA cap (ONEDNN_MAX_CPU_ISA=AVX2, say) below the bf16 instructions counts as not having them."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if cap != "ALL" and "AMX" not in cap and "BF16" not in cap:
        return False
    if cpuinfo is None:
        try:
            cpuinfo = open("/proc/cpuinfo").read()  # noqa: SIM115 - a one-off read
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively (a CUDA GPU that supports it, or a CPU with bf16 matrix instructions)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def pick_dtype(requested: str, device: torch.device) -> str:
    """The compute dtype: `requested`, or for "auto" bf16 where the hardware runs it natively."""
    if requested != "auto":
        return requested
    return "bfloat16" if native_bf16(device) else "float32"


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(requested)


def bf16_autocast(device: torch.device | str, wanted: bool = True) -> AbstractContextManager:
    """torch.autocast to bf16 on `device` where `wanted` and the hardware runs it natively; else a
    context that changes nothing (fp32)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=wanted and native_bf16(device))
