"""diffsearch write path: images, the diffusion model, embeddings, the on-disk index, training."""

import os

# OpenMP threads that wait for work sleep instead of spinning. With spinning (libgomp's default),
# a diffsearch process beside any other busy one burns its share in barriers: bench/contention.py
# measured indexing at 0.15 of its solo speed beside a second `diffsearch index`, 0.39 beside one
# busy core; with PASSIVE 0.72 and 0.80, and no solo cost. The OpenMP runtime reads this once,
# when torch loads it, so it is set here, before any diffsearch module imports torch (an
# application that imported torch first keeps its own setting; so does OMP_WAIT_POLICY set by hand).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
