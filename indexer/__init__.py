"""diffsearch write path: images, the diffusion model, embeddings, the on-disk index, training."""

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
