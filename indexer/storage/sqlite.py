"""The SQLite side of a folder index: the engine on index.db, its pragmas and its errors."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DatabaseError, OperationalError

from indexer.errors import IndexCorruptError, IndexReadOnlyError

DB_FILE = "index.db"


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
        cursor.execute("PRAGMA busy_timeout=10000")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    return engine


def _use_wal(cursor: Any, seconds: float = 10.0) -> None:
    """Put the database in WAL mode (a setting kept in the file, so usually already there).

    Switching needs a moment when no other connection is in the file, and SQLite answers "database
    is locked" at once instead of waiting on busy_timeout: several processes opening a new index
    together failed so (1 run in 40 of 8 openers). So the switch is retried for a while."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


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


def integrity_problems(engine: Engine) -> list[str]:
    """SQLite's own `PRAGMA integrity_check` (an empty list when it says ok)."""
    try:
        with engine.connect() as conn:
            lines = [str(row[0]) for row in conn.execute(text("PRAGMA integrity_check"))]
    except DatabaseError as exc:
        return [str(exc.orig)]
    return [] if lines == ["ok"] else lines
