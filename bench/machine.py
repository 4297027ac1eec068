"""What every benchmark prints about the machine it ran on: users' CPUs differ (one without native
bf16 ran the bf16 default ~7x slower than fp32), so each result says which CPU it came from."""

from __future__ import annotations

import platform
import re
import subprocess

from indexer.threads import available_cores


def cpu_line() -> str:
    """CPU: its model name, widest vector ISA, native bf16 and AMX, and the cores this process may use."""
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        cpu = ""
    model = re.search(r"Model name:\s*(.+)", cpu)
    isa = "AVX-512" if "avx512f" in cpu else "AVX2" if "avx2" in cpu else "no AVX2"
    bf16 = "avx512_bf16" in cpu or "amx_bf16" in cpu
    return (f"CPU: {model.group(1).strip() if model else platform.processor() or '?'} ({isa}, native bf16: {bf16}, "
            f"AMX: {'amx_bf16' in cpu}); cores available: {available_cores()}")  # fmt: skip
