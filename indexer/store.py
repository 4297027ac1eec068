"""The SQLite side of an index: one row per photo, failed files, and the index's metadata.

Row ids are SQLite AUTOINCREMENT ids, never reused, and they are the FAISS ids: a vector in
FAISS belongs to the row with its id, and a changed photo gets a new row (and so a new id).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, Float, Integer, String, Text, create_engine, delete, event, select, text
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from indexer.errors import IndexCorruptError, IndexMismatchError, IndexReadOnlyError

T = TypeVar("T")

SCHEMA_VERSION = 1
DB_FILE = "index.db"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Photo(Base):
    __tablename__ = "photos"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(String, unique=True, index=True)
    content_hash: Mapped[str] = mapped_column(String(32), index=True)
    size: Mapped[int]
    mtime: Mapped[float] = mapped_column(Float)
    width: Mapped[int]
    height: Mapped[int]
    format: Mapped[str] = mapped_column(String(16))
    taken_at: Mapped[datetime | None]
    indexed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Failure(Base):
    """A file that could not be indexed; retried only when its size or mtime changes."""

    __tablename__ = "failures"

    path: Mapped[str] = mapped_column(String, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    size: Mapped[int]
    mtime: Mapped[float] = mapped_column(Float)
    failed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def is_writable(index_dir: Path) -> bool:
    """Can this process change the index (its folder and, when it exists, its database file)?"""
    db = Path(index_dir) / DB_FILE
    return os.access(index_dir, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


def open_engine(index_dir: Path, read_only: bool = False) -> Engine:
    """An engine on `index_dir/index.db` in WAL mode, so readers never wait for the writer.

    `read_only` (a folder this process cannot write, such as a mounted snapshot) opens the file
    immutable: SQLite then needs no -wal/-shm files, and nobody can be changing it anyway.
    """
    db = Path(index_dir).absolute() / DB_FILE
    if read_only:
        return create_engine(f"sqlite:///file:{db}?mode=ro&immutable=1&uri=true")
    engine = create_engine(f"sqlite:///{db}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    return engine


@contextmanager
def database_errors(index_dir: Path) -> Iterator[None]:
    """SQLite's own errors as one clear diffsearch error that says what to do."""
    try:
        yield
    except OperationalError as exc:
        message = str(exc.orig)
        if "readonly" in message or "unable to open" in message or "read-only" in message:
            raise IndexReadOnlyError(
                f"cannot write to the index at {index_dir} ({message}): check its permissions, or use another --index folder"
            ) from None
        if "locked" in message or "busy" in message:
            raise
        raise IndexCorruptError(f"the index database {Path(index_dir) / DB_FILE} cannot be read ({message}): run `diffsearch check --repair`") from None
    except DatabaseError as exc:
        raise IndexCorruptError(
            f"the index database {Path(index_dir) / DB_FILE} is damaged ({exc.orig}): run `diffsearch check --repair`"
        ) from None


def guarded(index_dir: Path, fn: Callable[[], T]) -> T:
    with database_errors(index_dir):
        return fn()


def integrity_problems(engine: Engine) -> list[str]:
    """SQLite's own `PRAGMA integrity_check` (an empty list when it says ok)."""
    try:
        with engine.connect() as conn:
            lines = [str(row[0]) for row in conn.execute(text("PRAGMA integrity_check"))]
    except DatabaseError as exc:
        return [str(exc.orig)]
    return [] if lines == ["ok"] else lines


def create_schema(engine: Engine, read_only: bool = False) -> None:
    if read_only:
        with Session(engine) as session:
            _check_version(read_meta(session).get("schema_version"))
        return
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        version = read_meta(session).get("schema_version")
        if version is None:
            session.merge(Meta(key="schema_version", value=json.dumps(SCHEMA_VERSION)))
        _check_version(version)


def _check_version(version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise IndexMismatchError(
            f"this index has schema version {version}; this diffsearch reads up to {SCHEMA_VERSION}: upgrade diffsearch"
        )


def read_meta(session: Session) -> dict[str, Any]:
    return {row.key: json.loads(row.value) for row in session.scalars(select(Meta))}


def write_meta(session: Session, values: dict[str, Any]) -> None:
    for key, value in values.items():
        session.merge(Meta(key=key, value=json.dumps(value, sort_keys=True)))


def photos_under(session: Session, roots: list[Path]) -> dict[str, Photo]:
    """Rows whose path is one of `roots` or inside one of them, by path."""
    out: dict[str, Photo] = {}
    for root in roots:
        root_str = str(root)
        prefix = root_str.rstrip("/") + "/"
        query = select(Photo).where((Photo.path == root_str) | Photo.path.startswith(prefix, autoescape=True))
        out.update({p.path: p for p in session.scalars(query)})
    return out


def delete_failures(session: Session, paths: list[str], chunk: int = 500) -> None:
    for start in range(0, len(paths), chunk):
        session.execute(delete(Failure).where(Failure.path.in_(paths[start : start + chunk])))


def delete_photos(session: Session, ids: list[int], chunk: int = 500) -> None:
    """Delete rows by id, in chunks that stay under SQLite's bound-parameter limit."""
    for start in range(0, len(ids), chunk):
        session.execute(delete(Photo).where(Photo.id.in_(ids[start : start + chunk])))
