"""The default index: a folder holding SQLite rows (index.db), FAISS vectors (vectors.faiss) and
index.json, a copy of the settings and roots outside SQLite that `check --repair` rebuilds a
damaged database from (a fresh scan of the roots with the same embedding settings).

Writers commit SQLite first, then save FAISS atomically; `reconcile` (run whenever a writer opens
the index, and by `diffsearch check --repair`) drops whatever a crash left half-done, so the next
run simply embeds those photos again.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from indexer.errors import IndexNotFoundError, IndexReadOnlyError
from indexer.storage.base import IndexSettings, Location, PhotoIndex, is_database_url, read_settings, settle_settings
from indexer.storage.lock import WriteLock
from indexer.storage.rows import SCHEMA_VERSION, create_schema
from indexer.storage.sqlite import DB_FILE, database_errors, integrity_problems, is_writable, open_engine
from indexer.storage.vectors import VECTORS_FILE, VectorStore

SIDECAR_FILE = "index.json"
DEFAULT_INDEX_DIR = Path("diffsearch-index")


class FolderIndex(PhotoIndex):
    """An open index folder."""

    def __init__(self, location: Location, engine: Engine, settings: IndexSettings, read_only: bool = False) -> None:
        self.dir = Path(location)
        self.location = str(self.dir)
        self.cache_dir = self.dir
        self.engine = engine
        self.settings = settings
        self.read_only = read_only
        self._reload_lock = threading.Lock()
        try:
            self._stamp = self._vectors_stamp()
            self.vectors = VectorStore(self.dir / VECTORS_FILE, settings.dim, settings.index_type)
        except BaseException:
            engine.dispose()
            raise

    @staticmethod
    def handles(location: Location) -> bool:
        return not is_database_url(location)

    @staticmethod
    def _read(location: Location) -> tuple[Engine, IndexSettings, bool]:
        index_dir = Path(location)
        if not (index_dir / DB_FILE).is_file():
            raise IndexNotFoundError(f"no index at {index_dir} (run `diffsearch index PHOTOS --index {index_dir}` first)")
        read_only = not is_writable(index_dir)
        engine = open_engine(index_dir, read_only)
        return engine, read_settings(engine, str(index_dir), database_errors(index_dir), read_only), read_only

    @staticmethod
    def _write_lock(location: Location) -> WriteLock:
        index_dir = Path(location)
        try:
            index_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexReadOnlyError(f"cannot create the index folder {index_dir}: {exc.strerror or exc}") from None
        if not is_writable(index_dir):
            raise IndexReadOnlyError(f"cannot write to the index at {index_dir}: check its permissions, or use another --index folder")
        return WriteLock(index_dir)

    @classmethod
    def _open_for_writing(cls, location: Location, wanted: IndexSettings) -> FolderIndex:
        index_dir = Path(location)
        index_dir.mkdir(parents=True, exist_ok=True)
        engine = open_engine(index_dir)
        try:
            with database_errors(index_dir):
                create_schema(engine)
                with Session(engine) as session, session.begin():
                    settle_settings(session, wanted, str(index_dir), "another --index folder")
        except BaseException:
            engine.dispose()
            raise
        # A kill during a save leaves the temp file behind; the writer lock says nobody is saving now.
        (index_dir / VECTORS_FILE).with_suffix(".tmp").unlink(missing_ok=True)
        index = cls(index_dir, engine, wanted)
        index.write_sidecar()
        return index

    def errors(self) -> AbstractContextManager[None]:
        return database_errors(self.dir)

    def integrity_problems(self) -> list[str]:
        return integrity_problems(self.engine)

    # -- vectors: a FAISS file, saved whole after each commit --------------------------------------
    def add_vectors(self, session: Session, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        self.vectors.add(ids, vectors)

    def remove_vectors(self, ids: list[int]) -> None:
        if ids:
            self.vectors.remove(ids)
            self.vectors.save()

    def drop_unsaved_vectors(self, ids: list[int]) -> None:
        self.vectors.remove(ids)  # in memory only: the next checkpoint saves the file

    def save_vectors(self) -> None:
        self.vectors.save()

    def _vectors_stamp(self) -> tuple[int, int] | None:
        try:
            stat = (self.dir / VECTORS_FILE).stat()
            return stat.st_mtime_ns, stat.st_size
        except FileNotFoundError:
            return None

    def fresh_vectors(self) -> VectorStore:
        """The vectors, reloaded if an indexer saved a new file since (the rename makes it whole)."""
        with self._reload_lock:
            stamp = self._vectors_stamp()
            if stamp != self._stamp:
                self.vectors = VectorStore(self.dir / VECTORS_FILE, self.settings.dim, self.settings.index_type)
                self._stamp = stamp
            return self.vectors

    def missing_vectors_problem(self) -> str | None:
        if len(self.vectors) == 0 and not (self.dir / VECTORS_FILE).is_file() and self.counts()["photos"] > 0:
            return f"{self.dir / VECTORS_FILE} is missing but the index has photos: run `diffsearch check --repair`"
        return None

    # -- the sidecar --------------------------------------------------------------------------------
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

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())


__all__ = ["DEFAULT_INDEX_DIR", "SCHEMA_VERSION", "SIDECAR_FILE", "FolderIndex"]
