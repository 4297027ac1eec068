"""`diffsearch check --repair`: bring any damaged index back to a consistent, searchable state.

What it can meet, and what it does (every action is reported back):
- a `vectors.faiss` FAISS cannot read: set aside as `vectors.faiss.corrupt`; every row then
  lacks a vector and is re-embedded from its file (rows whose file is gone or changed are
  dropped, and the next `index` run picks those files up again);
- NaN/inf vectors: removed, and their photos re-embedded;
- an `index.db` SQLite cannot read or whose integrity check fails: set aside as
  `index.db.corrupt`, recreated with the settings kept in `index.json`, and filled by a fresh
  scan of the roots recorded there (every photo is re-embedded: rows cannot be trusted);
- rows without vectors and vectors without rows (a crash): as `reconcile` always did.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.errors import IndexCorruptError, IndexNotFoundError
from indexer.files import PhotoFile
from indexer.storage import IndexSettings, PhotoIndex, display_location, is_database_url
from indexer.storage.base import Location
from indexer.storage.folder import SIDECAR_FILE, FolderIndex
from indexer.storage.lock import WriteLock
from indexer.storage.rows import Photo, delete_photos
from indexer.storage.sqlite import DB_FILE, integrity_problems, open_engine
from indexer.storage.vectors import VECTORS_FILE, VectorStore

log = logging.getLogger(__name__)


@dataclass
class RepairReport:
    actions: list[str] = field(default_factory=list)
    reembedded: int = 0
    dropped: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def _set_aside(path: Path, report: RepairReport, why: str) -> None:
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    report.actions.append(f"{path.name} {why}: moved to {target.name}")


def _database_is_sound(index_dir: Path) -> list[str]:
    """Problems SQLite reports for index.db (an empty list when it opens and checks ok)."""
    if not (index_dir / DB_FILE).is_file():
        return []
    engine = open_engine(index_dir)
    try:
        return integrity_problems(engine)
    finally:
        engine.dispose()


def _vectors_are_readable(index_dir: Path, settings: IndexSettings) -> bool:
    try:
        VectorStore(index_dir / VECTORS_FILE, settings.dim, settings.index_type)
    except IndexCorruptError:
        return False
    return True


def repair_index(location: Location, embedder_for, follow_symlinks: bool = False) -> RepairReport:  # noqa: ANN001
    """Repair the index at `location`; `embedder_for(IndexSettings)` gives the Embedder to re-embed with."""
    from indexer.indexing import IndexRun

    report = RepairReport()
    if is_database_url(location):
        return _repair_database(location, embedder_for, report)
    index_dir = Path(location)
    with WriteLock(index_dir):
        sidecar = FolderIndex.read_sidecar(index_dir)
        problems = _database_is_sound(index_dir)
        rebuild_rows = bool(problems)
        if rebuild_rows:
            if sidecar is None:
                raise IndexCorruptError(
                    f"{index_dir / DB_FILE} is damaged ({problems[0]}) and there is no {SIDECAR_FILE} to rebuild it "
                    "from: index your photos again into a new --index folder"
                )
            _set_aside(index_dir / DB_FILE, report, f"failed SQLite's integrity check ({problems[0]})")
        settings = IndexSettings.from_meta(sidecar["settings"]) if rebuild_rows and sidecar else PhotoIndex.stored_settings(index_dir)
        if settings is None:
            raise IndexNotFoundError(f"no index at {index_dir} to repair")
        if (index_dir / VECTORS_FILE).exists() and not _vectors_are_readable(index_dir, settings):
            _set_aside(index_dir / VECTORS_FILE, report, "could not be read by FAISS")
        embedder = embedder_for(settings)
        index = PhotoIndex.open_for_writing(index_dir, settings)
        try:
            if rebuild_rows and sidecar:
                index.remember_roots([Path(r) for r in sidecar.get("roots", [])], bool(sidecar.get("follow_symlinks")))
            _repair_vectors(index, embedder, report)
            if rebuild_rows:
                roots, follow = index.roots()
                existing = [Path(r) for r in roots if Path(r).exists()]
                summary = IndexRun(index, embedder).run(existing, prune=False, follow_symlinks=follow or follow_symlinks)
                report.reembedded += summary.added + summary.updated
                report.actions.append(
                    f"rebuilt the rows by a fresh scan of {len(existing)} root(s): {summary.added} photos embedded, "
                    f"{summary.failed} failed"
                )
        finally:
            index.close()
    return report


def _repair_database(location: Location, embedder_for, report: RepairReport) -> RepairReport:  # noqa: ANN001
    """A Postgres index: its own transactions keep rows and vectors together, and Postgres has its
    own recovery; what is left to fix is rows whose vectors were lost, re-embedded from their files."""
    with PhotoIndex.write_lock(location):
        settings = PhotoIndex.stored_settings(location)
        if settings is None:
            raise IndexNotFoundError(f"no index at {display_location(location)} to repair")
        index = PhotoIndex.open_for_writing(location, settings)
        try:
            _repair_vectors(index, embedder_for(settings), report)
        finally:
            index.close()
    return report


def _repair_vectors(index: PhotoIndex, embedder, report: RepairReport) -> None:  # noqa: ANN001
    from indexer.indexing import IndexRun

    state = index.consistency(thorough=True)
    broken = set(state.rows_without_vectors) | set(state.nonfinite)
    if state.nonfinite:
        index.remove_vectors(state.nonfinite)
        report.actions.append(f"removed {len(state.nonfinite)} non-finite (NaN/inf) vector(s)")
    if state.vectors_without_rows:
        index.remove_vectors(state.vectors_without_rows)
        report.actions.append(f"removed {len(state.vectors_without_rows)} vector(s) without a row")
    if not broken:
        return
    with Session(index.engine) as session, session.begin():
        rows = list(session.scalars(select(Photo).where(Photo.id.in_(sorted(broken)))))
        files = _still_matching(rows)
        delete_photos(session, [r.id for r in rows])
    report.dropped += len(rows) - len(files)
    if files:
        summary = IndexRun(index, embedder).reembed(files)
        report.reembedded += summary.added + summary.updated
    report.actions.append(
        f"{len(rows)} row(s) had no usable vector: {len(files)} re-embedded from their files, "
        f"{len(rows) - len(files)} dropped (file gone or changed; the next `index` run picks it up)"
    )


def _still_matching(rows: list[Photo]) -> list[PhotoFile]:
    out = []
    for row in rows:
        try:
            info = os.stat(row.path)
        except OSError:
            continue
        if info.st_size == row.size and info.st_mtime == row.mtime:
            out.append(PhotoFile(Path(row.path), info.st_size, info.st_mtime))
    return out
