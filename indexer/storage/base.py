"""What every index is, wherever it lives: its settings, its consistency, and the `PhotoIndex` interface.

An index is rows (the SQLAlchemy models of rows.py: photos, failures, meta) plus one vector per
photo row, keyed by the row's id. Two implementations:

- folder.FolderIndex: SQLite + a FAISS file in one folder (the default; no server);
- postgres.PostgresIndex: the same rows and a pgvector column in one Postgres database.

Consistency rule, for both: a row is valid iff its id has a vector, and a vector is valid iff its
id has a row. Postgres keeps it by transactions; the folder by committing SQLite first and
saving FAISS atomically after, with `reconcile` dropping whatever a crash left half-done.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from indexer.embedding.config import EmbeddingConfig
from indexer.errors import ConfigError, IndexMismatchError, IndexNotFoundError
from indexer.storage.rows import Failure, Photo, create_schema, delete_photos, has_schema, read_meta, write_meta

log = logging.getLogger(__name__)

Location = str | os.PathLike[str]


def is_database_url(location: Location) -> bool:
    """A postgresql:// (or postgresql+driver://) URL rather than an index folder."""
    return str(location).split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def display_location(location: Location) -> str:
    """The location without a password: safe for logs, messages and /stats."""
    text = str(location)
    if not is_database_url(text):
        return text
    from sqlalchemy.engine import make_url

    return make_url(text).render_as_string(hide_password=True)


@dataclass(frozen=True)
class IndexSettings:
    """What an index was built with (stored in its meta table)."""

    embedding: EmbeddingConfig
    fingerprint: str  # the embedder's: config + model weights + projection
    model_fingerprint: str
    dim: int
    index_type: str
    # Fingerprints an earlier release gave these same vectors (dtype was then in the config).
    also_matches: tuple[str, ...] = ()

    def accepts(self, stored: IndexSettings) -> bool:
        return stored.fingerprint in (self.fingerprint, *self.also_matches) and stored.index_type == self.index_type

    def to_meta(self) -> dict[str, Any]:
        return {
            "embedding": self.embedding.to_dict(),
            "fingerprint": self.fingerprint,
            "model_fingerprint": self.model_fingerprint,
            "dim": self.dim,
            "index_type": self.index_type,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> IndexSettings:
        return cls(
            embedding=EmbeddingConfig.from_stored(meta["embedding"]),
            fingerprint=meta["fingerprint"],
            model_fingerprint=meta["model_fingerprint"],
            dim=int(meta["dim"]),
            index_type=meta["index_type"],
        )


@dataclass(frozen=True)
class Consistency:
    rows: int
    vectors: int
    rows_without_vectors: list[int]
    vectors_without_rows: list[int]
    sqlite_problems: list[str] = field(default_factory=list)  # PRAGMA integrity_check, when run
    nonfinite: list[int] = field(default_factory=list)  # ids of NaN/inf vectors, when looked for

    @property
    def ok(self) -> bool:
        return not (self.rows_without_vectors or self.vectors_without_rows or self.sqlite_problems or self.nonfinite)

    def describe(self) -> str:
        parts = [
            f"{self.rows} rows, {self.vectors} vectors, {len(self.rows_without_vectors)} rows without a vector, "
            f"{len(self.vectors_without_rows)} vectors without a row, {len(self.nonfinite)} non-finite vectors"
        ]
        if self.sqlite_problems:
            parts.append("SQLite integrity check: " + "; ".join(self.sqlite_problems[:5]))
        return ", ".join(parts)


def describe_mismatch(stored: IndexSettings, wanted: IndexSettings) -> str:
    a, b = stored.embedding.to_dict(), wanted.embedding.to_dict()
    fields = [f"{k}: index has {a[k]!r}, requested {b[k]!r}" for k in a if a[k] != b[k]]
    if stored.model_fingerprint != wanted.model_fingerprint:
        fields.append(f"model weights: index has {stored.model_fingerprint}, requested {wanted.model_fingerprint}")
    if stored.index_type != wanted.index_type:
        fields.append(f"index_type: index has {stored.index_type!r}, requested {wanted.index_type!r}")
    return "; ".join(fields) or f"fingerprint {stored.fingerprint} != {wanted.fingerprint}"


class VectorIndex(Protocol):
    """Vectors keyed by row id: what a search needs, whatever holds them."""

    kind: str
    filters_natively: bool  # search() applies path_prefix itself (else the caller over-fetches)

    def __len__(self) -> int: ...
    def ids(self) -> npt.NDArray[np.int64]: ...
    def extent(self) -> tuple[int, int]: ...
    def reconstruct(self, id_: int) -> npt.NDArray[np.float32] | None: ...
    def reconstruct_many(self, ids: Sequence[int]) -> dict[int, npt.NDArray[np.float32]]: ...
    def nonfinite_ids(self) -> npt.NDArray[np.int64]: ...
    def search(
        self, queries: npt.NDArray[np.float32], k: int, path_prefix: str | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...


class PhotoIndex(ABC):
    """An open index. Writers hold `PhotoIndex.write_lock(location)` around any change."""

    engine: Engine
    settings: IndexSettings
    read_only: bool
    vectors: VectorIndex
    location: str  # display form: a folder, or a URL without its password
    cache_dir: Path | None  # where thumbnails may be cached; None: keep them in memory

    # -- opening: dispatch on the location -------------------------------------------------------
    @staticmethod
    def _kind(location: Location) -> type[PhotoIndex]:
        """The implementation that handles `location` (the package imports every implementation)."""
        for kind in PhotoIndex.__subclasses__():
            if kind.handles(location):
                return kind
        raise ConfigError(f"no index implementation handles {display_location(location)!r}")

    @staticmethod
    @abstractmethod
    def handles(location: Location) -> bool: ...

    @classmethod
    def open(cls, location: Location) -> PhotoIndex:
        """Open an existing index (for reading, or writing with its stored settings)."""
        return PhotoIndex._kind(location)._open(location)

    @classmethod
    def stored_settings(cls, location: Location) -> IndexSettings | None:
        """The settings an existing index was built with, or None where there is no index yet."""
        return PhotoIndex._kind(location)._stored_settings(location)

    @classmethod
    def open_for_writing(cls, location: Location, wanted: IndexSettings) -> PhotoIndex:
        """Create the index with `wanted`, or open it and fail if it was built otherwise."""
        return PhotoIndex._kind(location)._open_for_writing(location, wanted)

    @staticmethod
    def write_lock(location: Location) -> AbstractContextManager[Any]:
        """The one-writer lock of that index (a lock file, or a Postgres advisory lock)."""
        return PhotoIndex._kind(location)._write_lock(location)

    @abstractmethod
    def __init__(self, location: Location, engine: Engine, settings: IndexSettings, read_only: bool = False) -> None: ...

    @staticmethod
    @abstractmethod
    def _read(location: Location) -> tuple[Engine, IndexSettings, bool]:
        """The engine, stored settings and read-only flag of an existing index (vectors not loaded);
        IndexNotFoundError where there is none."""

    @classmethod
    def _open(cls, location: Location) -> PhotoIndex:
        engine, settings, read_only = cls._read(location)
        return cls(location, engine, settings, read_only)

    @classmethod
    def _stored_settings(cls, location: Location) -> IndexSettings | None:
        try:
            engine, settings, _ = cls._read(location)
        except IndexNotFoundError:
            return None
        engine.dispose()
        return settings

    @classmethod
    @abstractmethod
    def _open_for_writing(cls, location: Location, wanted: IndexSettings) -> PhotoIndex: ...

    @staticmethod
    @abstractmethod
    def _write_lock(location: Location) -> AbstractContextManager[Any]: ...

    # -- what each store does its own way ---------------------------------------------------------
    @abstractmethod
    def errors(self) -> AbstractContextManager[None]:
        """The database's own errors as one clear diffsearch error."""

    @abstractmethod
    def add_vectors(self, session: Session, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Vectors for rows flushed (not yet committed) in `session`."""

    @abstractmethod
    def remove_vectors(self, ids: list[int]) -> None:
        """Drop the vectors of rows already deleted and committed (and persist that)."""

    def drop_unsaved_vectors(self, ids: list[int]) -> None:
        """Take back vectors added in this session whose rows are being taken back before the commit.
        Stores that keep vectors in the rows' transaction need nothing: deleting the rows does it."""

    @abstractmethod
    def save_vectors(self) -> None:
        """Persist vectors added since the last save; called right after each commit."""

    @abstractmethod
    def fresh_vectors(self) -> VectorIndex:
        """The vectors as the writer last saved them (a reader sees a running indexer's checkpoints)."""

    @abstractmethod
    def missing_vectors_problem(self) -> str | None:
        """A message when the vectors are gone though rows exist (damage, not an empty index)."""

    @abstractmethod
    def integrity_problems(self) -> list[str]: ...

    @abstractmethod
    def disk_bytes(self) -> int: ...

    def write_sidecar(self) -> None:
        """A copy of the settings and roots outside the database, where the store keeps one."""

    def close(self) -> None:
        self.engine.dispose()

    # -- shared: rows, roots, counts, consistency --------------------------------------------------
    def roots(self) -> tuple[list[str], bool]:
        """Every root ever indexed here, and whether symlinks were followed under any of them."""
        with Session(self.engine) as session:
            meta = read_meta(session)
        return list(meta.get("roots", [])), bool(meta.get("follow_symlinks", False))

    def remember_roots(self, roots: list[Path], follow_symlinks: bool) -> None:
        known, followed = self.roots()
        merged = known + [str(r) for r in roots if str(r) not in known]
        if merged == known and followed >= follow_symlinks:
            return  # nothing new: no write on every run
        with self.errors(), Session(self.engine) as session, session.begin():
            write_meta(session, {"roots": merged, "follow_symlinks": followed or follow_symlinks})
        self.write_sidecar()

    def row_ids(self) -> npt.NDArray[np.int64]:
        with self.errors(), Session(self.engine) as session:
            return np.array(session.scalars(select(Photo.id)).all(), dtype=np.int64)

    def consistency(self, thorough: bool = False) -> Consistency:
        """Rows vs vectors; `thorough` adds the database's integrity check and a scan for NaN/inf vectors."""
        problems = self.integrity_problems() if thorough else []
        rows = self.row_ids()
        ids = self.vectors.ids()
        return Consistency(
            rows=len(rows),
            vectors=len(ids),
            rows_without_vectors=np.setdiff1d(rows, ids).tolist(),
            vectors_without_rows=np.setdiff1d(ids, rows).tolist(),
            sqlite_problems=problems,
            nonfinite=self.vectors.nonfinite_ids().tolist() if thorough else [],
        )

    def reconcile(self) -> Consistency:
        """Make rows and vectors agree by dropping the half of anything a crash left half-done."""
        report = self.consistency()
        if report.ok:
            return report
        log.warning(
            "repairing %s: %d row(s) without a vector (will be re-embedded), %d vector(s) without a row",
            self.location, len(report.rows_without_vectors), len(report.vectors_without_rows),
        )  # fmt: skip
        if report.vectors_without_rows:
            self.remove_vectors(report.vectors_without_rows)
        if report.rows_without_vectors:
            with Session(self.engine) as session, session.begin():
                delete_photos(session, report.rows_without_vectors)
        return report

    def counts(self) -> dict[str, int]:
        with self.errors(), Session(self.engine) as session:
            photos = session.scalar(select(func.count()).select_from(Photo)) or 0
            failures = session.scalar(select(func.count()).select_from(Failure)) or 0
        return {"photos": int(photos), "vectors": len(self.vectors), "failures": int(failures)}


def read_settings(engine: Engine, where: str, errors: AbstractContextManager[None], read_only: bool) -> IndexSettings:
    """The settings in an index's meta table (checking its schema version); the engine is
    disposed of when there are none or the database fails, so the caller owns it only on success."""
    unfinished = f"{where} holds no finished index settings; index some photos into it first"
    try:
        with errors:
            # A writer may be creating this index right now: a reader neither races it to create
            # the schema nor calls a half-made database damaged; it only upgrades a finished index.
            if not has_schema(engine):
                raise IndexNotFoundError(unfinished)
            with Session(engine) as session:
                meta = read_meta(session)
            if "embedding" not in meta:
                raise IndexNotFoundError(unfinished)
            create_schema(engine, read_only)
        return IndexSettings.from_meta(meta)
    except BaseException:
        engine.dispose()
        raise


def settle_settings(session: Session, wanted: IndexSettings, where: str, elsewhere: str) -> None:
    """Record `wanted` in a new index, or fail if the index was built with other settings."""
    meta = read_meta(session)
    if "embedding" not in meta:
        write_meta(session, wanted.to_meta())
        return
    stored = IndexSettings.from_meta(meta)
    if not wanted.accepts(stored):
        raise IndexMismatchError(
            f"{where} was built with model {stored.embedding.model!r} and other settings "
            f"({describe_mismatch(stored, wanted)}). Use the index's settings or {elsewhere}."
        )
