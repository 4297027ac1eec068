"""The rows of an index, in SQLite or Postgres alike: one per photo, failed files, and metadata.

Row ids are AUTOINCREMENT (SQLite) or sequence (Postgres) ids, never reused, and they are the
vector ids: a vector belongs to the row with its id, and a changed photo gets a new row (and so
a new id).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sqlalchemy import Engine, Float, Integer, LargeBinary, String, Text, delete, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from indexer.errors import IndexMismatchError

SCHEMA_VERSION = 1


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


class PhotoLatent(Base):
    """A photo's whole-frame latent (float16, C x h x w), kept for re-ranking a search's short list.

    Written in the same transaction as its photo's row and deleted with it. Indexes made before
    latents were kept have no rows here (the table is added empty when such an index is next
    opened for writing) and simply search without re-ranking."""

    __tablename__ = "photo_latents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the photo's id
    channels: Mapped[int]
    height: Mapped[int]
    width: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)


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


def create_schema(engine: Engine, read_only: bool = False) -> None:
    if read_only:
        with Session(engine) as session:
            _check_version(read_meta(session).get("schema_version"))
        return
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # One creator at a time (the others wait on busy_timeout), so two processes opening a
            # new index together never both find a table missing and both CREATE it.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        Base.metadata.create_all(conn)
        with Session(bind=conn) as session:
            # Only the first version written counts; a second opener does not fail on it.
            _insert_meta(session, {"schema_version": SCHEMA_VERSION}, overwrite=False)
            _check_version(read_meta(session).get("schema_version"))
        conn.commit()


def has_schema(engine: Engine) -> bool:
    """Does the database hold the meta table yet (a writer creating a new index may not be there)?"""
    return inspect(engine).has_table(Meta.__tablename__)


def _check_version(version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise IndexMismatchError(
            f"this index has schema version {version}; this diffsearch reads up to {SCHEMA_VERSION}: upgrade diffsearch"
        )


def read_meta(session: Session) -> dict[str, Any]:
    return {row.key: json.loads(row.value) for row in session.scalars(select(Meta))}


def write_meta(session: Session, values: dict[str, Any]) -> None:
    _insert_meta(session, values, overwrite=True)


def _insert_meta(session: Session, values: dict[str, Any], overwrite: bool) -> None:
    """One INSERT .. ON CONFLICT per key: a read-then-insert (`merge`) races a concurrent writer
    into a UNIQUE failure, since SQLite starts the transaction only at the INSERT."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for key, value in values.items():
        statement = insert(Meta).values(key=key, value=json.dumps(value, sort_keys=True))
        if overwrite:
            statement = statement.on_conflict_do_update(index_elements=[Meta.key], set_={"value": statement.excluded.value})
        else:
            statement = statement.on_conflict_do_nothing(index_elements=[Meta.key])
        session.execute(statement)


def photos_under(session: Session, roots: list[Path]) -> dict[str, Photo]:
    """Rows whose path is one of `roots` or inside one of them, by path."""
    out: dict[str, Photo] = {}
    for root in roots:
        root_str = str(root)
        prefix = root_str.rstrip("/") + "/"
        query = select(Photo).where((Photo.path == root_str) | Photo.path.startswith(prefix, autoescape=True))
        out.update({p.path: p for p in session.scalars(query)})
    return out


def delete_where_in(session: Session, column: Any, values: list[Any], chunk: int = 500) -> None:
    """DELETE the rows whose `column` is one of `values`, in chunks under SQLite's bound-parameter limit."""
    for start in range(0, len(values), chunk):
        session.execute(delete(column.class_).where(column.in_(values[start : start + chunk])))


def delete_failures(session: Session, paths: list[str]) -> None:
    delete_where_in(session, Failure.path, paths)


def delete_photos(session: Session, ids: list[int]) -> None:
    """Delete rows by id, with their latents (a Postgres index's vectors go with them: ON DELETE CASCADE)."""
    delete_where_in(session, Photo.id, ids)
    delete_where_in(session, PhotoLatent.id, ids)


def latent_row(photo_id: int, latent: npt.NDArray[np.float16]) -> PhotoLatent:
    channels, height, width = latent.shape
    return PhotoLatent(id=photo_id, channels=channels, height=height, width=width, data=latent.astype(np.float16).tobytes())


def read_latents(session: Session, ids: list[int]) -> dict[int, npt.NDArray[np.float16]]:
    """The kept latents of these photos, by id (photos without one are left out)."""
    rows = session.scalars(select(PhotoLatent).where(PhotoLatent.id.in_(ids))) if ids else []
    return {r.id: np.frombuffer(r.data, np.float16).reshape(r.channels, r.height, r.width) for r in rows}
