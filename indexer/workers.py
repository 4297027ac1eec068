"""Worker processes that decode photos (torch DataLoader workers, forked), started safely."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


def forked_cleanly(loader: DataLoader) -> Iterator[Any]:
    """`iter(loader)`, its decode workers forked with no garbage of this process left for them to collect.

    A forked worker that garbage-collects an object it inherited runs that object's destructor in
    the child, where the object's threads do not exist: an OpenVINO compiled model dropped by an
    earlier embedder waits there for its executor threads forever (seen: a test process that had
    run several models hung in a worker's `CPUStreamsExecutor` destructor). So the garbage is
    collected here, where the threads live, and what is left is frozen out of the children's
    collections while they fork (gc.freeze, as the gc docs advise before fork)."""
    if not loader.num_workers:
        return iter(loader)
    gc.collect()
    gc.freeze()
    try:
        return iter(loader)  # forks the workers
    finally:
        gc.unfreeze()
