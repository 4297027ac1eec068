"""An index folder: SQLite rows + FAISS vectors + the embedding settings they were made with.

Consistency rule: a row is valid iff its id is in FAISS and a vector is valid iff its id has a
row. Writers commit SQLite first, then save FAISS atomically; `reconcile` (run whenever a writer
opens the index, and by `diffsearch check --repair`) drops whatever a crash left half-done, so
the next run simply embeds those photos again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from indexer.config import EmbeddingConfig
from indexer.errors import IndexMismatchError, IndexNotFoundError
from indexer.store import (
    DB_FILE,
    SCHEMA_VERSION,
    Failure,
    Photo,
    create_schema,
    database_errors,
    delete_photos,
    integrity_problems,
    is_writable,
    open_engine,
    read_meta,
    write_meta,
)
from indexer.vectors import VECTORS_FILE, VectorStore

# A copy of the settings and roots outside SQLite: what `check --repair` rebuilds a damaged
# database from (a fresh scan of the roots with the same embedding settings).
SIDECAR_FILE = "index.json"

log = logging.getLogger(__name__)

DEFAULT_INDEX_DIR = Path("diffsearch-index")


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


class PhotoIndex:
    """An open index folder. Writers hold indexer.lock.WriteLock around any change."""

    def __init__(self, index_dir: Path, engine: Engine, settings: IndexSettings, read_only: bool = False) -> None:
        self.dir = Path(index_dir)
        self.engine = engine
        self.settings = settings
        self.read_only = read_only
        try:
            self.vectors = VectorStore(self.dir / VECTORS_FILE, settings.dim, settings.index_type)
        except BaseException:
            engine.dispose()
            raise

    @staticmethod
    def _read(index_dir: Path) -> tuple[Engine, IndexSettings, bool]:
        """The engine, stored settings and read-only flag of an existing index (vectors not loaded)."""
        if not (index_dir / DB_FILE).is_file():
            raise IndexNotFoundError(f"no index at {index_dir} (run `diffsearch index PHOTOS --index {index_dir}` first)")
        read_only = not is_writable(index_dir)
        engine = open_engine(index_dir, read_only)
        try:
            with database_errors(index_dir):
                create_schema(engine, read_only)
                with Session(engine) as session:
                    meta = read_meta(session)
        except BaseException:
            engine.dispose()
            raise
        if "embedding" not in meta:
            engine.dispose()
            raise IndexNotFoundError(f"{index_dir} holds no finished index settings; index some photos into it first")
        return engine, IndexSettings.from_meta(meta), read_only

    @classmethod
    def open(cls, index_dir: Path) -> PhotoIndex:
        """Open an existing index (for reading, or writing with its stored settings)."""
        engine, settings, read_only = cls._read(Path(index_dir))
        return cls(Path(index_dir), engine, settings, read_only)

    @classmethod
    def stored_settings(cls, index_dir: Path) -> IndexSettings | None:
        """The settings an existing index was built with, or None where there is no index yet."""
        try:
            engine, settings, _ = cls._read(Path(index_dir))
        except IndexNotFoundError:
            return None
        engine.dispose()
        return settings

    @classmethod
    def open_for_writing(cls, index_dir: Path, wanted: IndexSettings) -> PhotoIndex:
        """Create the index with `wanted`, or open it and fail if it was built otherwise."""
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        engine = open_engine(index_dir)
        try:
            with database_errors(index_dir):
                create_schema(engine)
                with Session(engine) as session, session.begin():
                    meta = read_meta(session)
                    if "embedding" in meta:
                        stored = IndexSettings.from_meta(meta)
                        if not wanted.accepts(stored):
                            raise IndexMismatchError(
                                f"{index_dir} was built with model {stored.embedding.model!r} and other settings "
                                f"({describe_mismatch(stored, wanted)}). Use the index's settings or another --index folder."
                            )
                    else:
                        write_meta(session, wanted.to_meta())
        except BaseException:
            engine.dispose()
            raise
        # A kill during a save leaves the temp file behind; the writer lock says nobody is saving now.
        (index_dir / VECTORS_FILE).with_suffix(".tmp").unlink(missing_ok=True)
        index = cls(index_dir, engine, wanted)
        index.write_sidecar()
        return index

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
        with database_errors(self.dir), Session(self.engine) as session, session.begin():
            write_meta(session, {"roots": merged, "follow_symlinks": followed or follow_symlinks})
        self.write_sidecar()

    def write_sidecar(self) -> None:
        """index.json: the settings and roots, atomically, for rebuilding a damaged database."""
        roots, follow = self.roots()
        payload = {"settings": self.settings.to_meta(), "roots": roots, "follow_symlinks": follow}
        target = self.dir / SIDECAR_FILE
        tmp = target.with_name(f".{SIDECAR_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        os.replace(tmp, target)

    @staticmethod
    def read_sidecar(index_dir: Path) -> dict[str, Any] | None:
        try:
            return json.loads((Path(index_dir) / SIDECAR_FILE).read_text())
        except (OSError, ValueError):
            return None

    def consistency(self, thorough: bool = False) -> Consistency:
        """Rows vs vectors; `thorough` adds SQLite's integrity check and a scan for NaN/inf vectors."""
        problems = integrity_problems(self.engine) if thorough else []
        with database_errors(self.dir), Session(self.engine) as session:
            rows = np.array(session.scalars(select(Photo.id)).all(), dtype=np.int64)
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
        """Make SQLite and FAISS agree by dropping the half of anything a crash left half-done."""
        report = self.consistency()
        if report.ok:
            return report
        log.warning(
            "repairing %s: %d row(s) without a vector (will be re-embedded), %d vector(s) without a row",
            self.dir, len(report.rows_without_vectors), len(report.vectors_without_rows),
        )  # fmt: skip
        if report.vectors_without_rows:
            self.vectors.remove(report.vectors_without_rows)
            self.vectors.save()
        if report.rows_without_vectors:
            with Session(self.engine) as session, session.begin():
                delete_photos(session, report.rows_without_vectors)
        return report

    def counts(self) -> dict[str, int]:
        with database_errors(self.dir), Session(self.engine) as session:
            photos = session.scalar(select(func.count()).select_from(Photo)) or 0
            failures = session.scalar(select(func.count()).select_from(Failure)) or 0
        return {"photos": int(photos), "vectors": len(self.vectors), "failures": int(failures)}

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())

    def close(self) -> None:
        self.engine.dispose()


__all__ = ["DEFAULT_INDEX_DIR", "SCHEMA_VERSION", "Consistency", "IndexSettings", "PhotoIndex"]
