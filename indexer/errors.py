"""The library's error hierarchy: one base class, one subclass per thing a caller can act on."""

from __future__ import annotations


class DiffsearchError(Exception):
    """Base class of every error diffsearch raises on purpose."""


class InvalidImageError(DiffsearchError):
    """An input could not be read as an image (names the source and the reason)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ModelLoadError(DiffsearchError):
    """A diffusion model could not be found or loaded."""


class ConfigError(DiffsearchError):
    """A setting has a value outside what it accepts."""


class IndexNotFoundError(DiffsearchError):
    """No index exists at the given folder."""


class IndexMismatchError(DiffsearchError):
    """An index was built with another model or embedding configuration."""


class IndexLockedError(DiffsearchError):
    """Another process is writing to the index."""


class IndexCorruptError(DiffsearchError):
    """SQLite and FAISS disagree in a way `diffsearch check --repair` must fix."""


class IndexReadOnlyError(DiffsearchError):
    """The index must be changed but this process may not write to its folder."""


class DatabaseUnavailableError(DiffsearchError):
    """The index's database server cannot be reached or refused the connection."""
