"""diffsearch write path: images, the diffusion model, embeddings, the on-disk index, training."""

from indexer.config import EmbeddingConfig
from indexer.errors import (
    ConfigError,
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
