"""One place that decides how many threads diffsearch computes with: torch (and so OpenMP and
oneDNN), and FAISS, from the cores this process may really use.

`os.cpu_count()` counts the machine; a container or `taskset` may allow fewer. Using more threads
than cores makes every thread wait on the others (two busy processes then crawl instead of
sharing), so the budget is the smaller of the CPU affinity mask and the cgroup CPU quota, or
`DIFFSEARCH_THREADS` when set. Decode workers run single-threaded (see indexer.indexing).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> int | None:
    """Whole CPUs the cgroup quota allows (rounded up), or None where there is no quota."""
    try:
        quota, period = v2.read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = int(v1[0].read_text()), int(v1[1].read_text())
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may run on: the affinity mask, capped by the cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def thread_budget(requested: int = 0, env: dict[str, str] | None = None) -> int:
    """`requested` if > 0, else DIFFSEARCH_THREADS if set, else every available core."""
    if requested > 0:
        return requested
    raw = (os.environ if env is None else env).get("DIFFSEARCH_THREADS", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value > 0:
            return value
        log.warning("DIFFSEARCH_THREADS=%r is not a positive integer; using the available cores", raw)
    return available_cores()


def apply_thread_budget(threads: int) -> None:
    """Give torch (OpenMP, oneDNN) and FAISS the same budget."""
    import faiss
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    log.debug("compute threads: %d", threads)
