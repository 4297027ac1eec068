"""diffsearch write path: images, the diffusion model, embeddings, the on-disk index, training."""

import os

# OpenMP threads that wait for work spin briefly, then sleep. libgomp's default spins for 300,000
# rounds: a diffsearch process beside any other busy one burns its share in barriers
# (bench/contention.py measured indexing at 0.15 of its solo speed beside a second `diffsearch
# index`, 0.39 beside one busy core). Never spinning (OMP_WAIT_POLICY=PASSIVE, the setting before
# this one) cost nothing to the large convolutions of indexing, but made the many small torch ops
# of spatial matching (search's re-ranking, dedup's verification) wake sleeping threads for each
# one: dedup on 2,893 photos took 51 s instead of 22-26 s. 10,000 rounds keep the matching as fast
# as spinning (1,000 do not) and the contention of sleeping (bench/results/contention.md). The
# OpenMP runtime reads this once, when torch loads it, so it is set here, before any diffsearch
# module imports torch (an application that imported torch first keeps its own setting; so does a
# GOMP_SPINCOUNT or OMP_WAIT_POLICY set by hand).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from indexer.embedding.config import EmbeddingConfig
from indexer.errors import (
    ConfigError,
    DatabaseUnavailableError,
    DiffsearchError,
    IndexCorruptError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexReadOnlyError,
    InvalidImageError,
    ModelLoadError,
)

__all__ = [
    "ConfigError",
    "DatabaseUnavailableError",
    "DiffsearchError",
    "EmbeddingConfig",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReadOnlyError",
    "InvalidImageError",
    "ModelLoadError",
]
