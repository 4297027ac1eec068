"""A Postgres index (the `[postgres]` extra): the same rows as a folder index, and the vectors in a
pgvector column beside them, in one database that several `serve` processes can share.

Rows and vectors commit in one transaction, so they cannot disagree after a crash; one writer at
a time holds a Postgres advisory lock (released by the server when the writer's connection dies,
even by kill -9). Searches are `ORDER BY embedding <-> query LIMIT k`: exact with index type
`Flat`, or through an HNSW index (`HNSW32` = m 32) with `hnsw.ef_search` set per query and
`hnsw.iterative_scan` for path-filtered queries, so a filter still returns k results.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, Integer, create_engine, func, inspect, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from indexer.errors import (
    ConfigError,
    DatabaseUnavailableError,
    IndexLockedError,
    IndexNotFoundError,
)
from indexer.storage.base import IndexSettings, Location, PhotoIndex, display_location, is_database_url, read_settings, settle_settings
from indexer.storage.rows import Photo, create_schema, delete_where_in

try:
    from pgvector.sqlalchemy import Vector
except ImportError:  # pragma: no cover - the extra is not installed
    Vector = None

log = logging.getLogger(__name__)

LOCK_KEY = 0x646966667365  # "diffse": the advisory lock every diffsearch writer takes
MAX_EF_SEARCH = 1000  # pgvector's limit


class VectorBase(DeclarativeBase):
    """Kept apart from rows.Base: a folder index never creates (or imports) a pgvector table."""


class PhotoVector(VectorBase):
    __tablename__ = "photo_vectors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # = photos.id (DDL below adds the FK)
    embedding: Mapped[Any] = mapped_column(Vector() if Vector is not None else Integer)


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy alone would pick psycopg2, not a dependency)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def ann_index(index_type: str) -> int | None:
    """HNSW's m for 'HNSW<m>' (None for 'Flat': exact search); other FAISS strings do not apply."""
    if index_type == "Flat":
        return None
    match = re.fullmatch(r"HNSW(\d*)(,Flat)?", index_type)
    if not match:
        raise ConfigError(f"a Postgres index takes --index-type Flat (exact) or HNSW<m> (e.g. HNSW32), not {index_type!r}")
    return int(match.group(1) or 16)


def _engine(location: Location, pool: bool = True) -> Engine:
    if Vector is None:
        raise ConfigError("a postgresql:// index needs the [postgres] extra: pip install 'diffsearch[postgres]'")
    kwargs: dict[str, Any] = {"pool_pre_ping": True} if pool else {"poolclass": NullPool}
    return create_engine(normalise_url(str(location)), **kwargs)


@contextmanager
def database_errors(location: Location) -> Iterator[None]:
    """Connection failures as one clear line that names the server (never its password)."""
    try:
        yield
    except OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        raise DatabaseUnavailableError(f"cannot use the database {display_location(location)}: {first}") from None


class AdvisoryLock:
    """One writer per database: a session-level advisory lock, freed when its connection ends."""

    fileno = None  # nothing for forked decode workers to close

    def __init__(self, location: Location) -> None:
        self.location = location
        self.engine = _engine(location, pool=False)
        self.conn: Any = None

    def __enter__(self) -> AdvisoryLock:
        with database_errors(self.location):
            self.conn = self.engine.connect()
            got = self.conn.execute(select(func.pg_try_advisory_lock(LOCK_KEY))).scalar()
            self.conn.commit()
        if not got:
            self.conn.close()
            self.engine.dispose()
            raise IndexLockedError(f"{display_location(self.location)} is being written by another diffsearch process; wait for it to finish")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.execute(select(func.pg_advisory_unlock(LOCK_KEY)))
            self.conn.commit()
        finally:
            self.conn.close()
            self.engine.dispose()


class PgVectors:
    """The vectors of a Postgres index, searched by pgvector's L2 distance operator."""

    filters_natively = True

    def __init__(self, engine: Engine, dim: int, hnsw_m: int | None) -> None:
        self.engine, self.dim, self.hnsw_m = engine, dim, hnsw_m

    @property
    def kind(self) -> str:
        return f"pgvector HNSW (m={self.hnsw_m})" if self.hnsw_m else "pgvector exact"

    def __len__(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(PhotoVector)) or 0)

    def ids(self) -> npt.NDArray[np.int64]:
        with Session(self.engine) as session:
            return np.array(session.scalars(select(PhotoVector.id).order_by(PhotoVector.id)).all(), dtype=np.int64)

    def extent(self) -> tuple[int, int]:
        """(number of vectors, largest id; 0 when empty), counted by the database."""
        with Session(self.engine) as session:
            count, largest = session.execute(select(func.count(), func.max(PhotoVector.id)).select_from(PhotoVector)).one()
        return int(count or 0), int(largest or 0)

    def reconstruct(self, id_: int) -> npt.NDArray[np.float32] | None:
        if not 0 < int(id_) < 2**31:
            return None
        with Session(self.engine) as session:
            found = session.scalar(select(PhotoVector.embedding).where(PhotoVector.id == int(id_)))
        return None if found is None else np.asarray(found, dtype=np.float32)

    def reconstruct_many(self, ids: Sequence[int]) -> dict[int, npt.NDArray[np.float32]]:
        """The stored vectors of those `ids` that have one, in one query."""
        wanted = [int(i) for i in ids if 0 < int(i) < 2**31]
        if not wanted:
            return {}
        with Session(self.engine) as session:
            rows = session.execute(select(PhotoVector.id, PhotoVector.embedding).where(PhotoVector.id.in_(wanted))).all()
        return {int(i): np.asarray(v, dtype=np.float32) for i, v in rows}

    def nonfinite_ids(self) -> npt.NDArray[np.int64]:
        """pgvector refuses NaN and infinity on insert, so a stored vector is always finite."""
        return np.zeros(0, dtype=np.int64)

    def search(
        self, queries: npt.NDArray[np.float32], k: int, path_prefix: str | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Squared L2 distances and ids, (n, k) each, like FAISS; missing neighbours have id -1."""
        d2 = np.full((len(queries), k), np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        with Session(self.engine) as session, session.begin():
            if self.hnsw_m:
                session.execute(text(f"SET LOCAL hnsw.ef_search = {min(MAX_EF_SEARCH, max(64, 2 * k))}"))
                if path_prefix:  # keep scanning the graph until k rows pass the filter
                    session.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
            for n, query in enumerate(np.asarray(queries, dtype=np.float32)):
                distance = PhotoVector.embedding.l2_distance(query)
                stmt = select(PhotoVector.id, distance).order_by(distance).limit(k)
                if path_prefix:
                    stmt = stmt.join(Photo, Photo.id == PhotoVector.id).where(Photo.path.startswith(path_prefix, autoescape=True))
                found = session.execute(stmt).all()
                for j, (id_, dist) in enumerate(found):
                    ids[n, j], d2[n, j] = id_, float(dist) ** 2
        return d2, ids


class PostgresIndex(PhotoIndex):
    """An open Postgres index. Thumbnails are not cached on disk (servers may share no folder)."""

    def __init__(self, location: Location, engine: Engine, settings: IndexSettings, read_only: bool = False) -> None:
        self.location = display_location(location)
        self.cache_dir = None
        self.engine = engine
        self.settings = settings
        self.read_only = read_only
        self._url = str(location)
        self.vectors = PgVectors(engine, settings.dim, ann_index(settings.index_type))

    @staticmethod
    def handles(location: Location) -> bool:
        return is_database_url(location)

    @staticmethod
    def _read(location: Location) -> tuple[Engine, IndexSettings, bool]:
        engine = _engine(location)
        try:
            with database_errors(location):
                found = inspect(engine).has_table("meta")
        except BaseException:
            engine.dispose()
            raise
        if not found:
            engine.dispose()
            raise IndexNotFoundError(f"no index in {display_location(location)} (run `diffsearch index PHOTOS --database URL` first)")
        # Read-only opens the schema without changing it; the role's own rights decide the rest.
        return engine, read_settings(engine, display_location(location), database_errors(location), read_only=True), False

    @staticmethod
    def _write_lock(location: Location) -> AdvisoryLock:
        return AdvisoryLock(location)

    @classmethod
    def _open_for_writing(cls, location: Location, wanted: IndexSettings) -> PostgresIndex:
        hnsw_m = ann_index(wanted.index_type)
        engine = _engine(location)
        try:
            with database_errors(location):
                _create_extension(engine, location)
                create_schema(engine)
                with Session(engine) as session, session.begin():
                    settle_settings(session, wanted, display_location(location), "another database")
                    session.execute(
                        text(
                            f"CREATE TABLE IF NOT EXISTS {PhotoVector.__tablename__} ("
                            "id integer PRIMARY KEY REFERENCES photos(id) ON DELETE CASCADE, "
                            f"embedding vector({int(wanted.dim)}) NOT NULL)"
                        )
                    )
                    if hnsw_m:
                        session.execute(
                            text(
                                f"CREATE INDEX IF NOT EXISTS photo_vectors_hnsw ON {PhotoVector.__tablename__} "
                                f"USING hnsw (embedding vector_l2_ops) WITH (m = {hnsw_m}, ef_construction = {max(64, 4 * hnsw_m)})"
                            )
                        )
        except BaseException:
            engine.dispose()
            raise
        return cls(location, engine, wanted)

    def errors(self) -> Any:
        return database_errors(self._url)

    def integrity_problems(self) -> list[str]:
        with self.errors(), self.engine.connect() as conn:
            dims = conn.execute(text(f"SELECT DISTINCT vector_dims(embedding) FROM {PhotoVector.__tablename__}")).scalars().all()
        wrong = [d for d in dims if d != self.settings.dim]
        return [f"vectors of dimension {wrong} in a {self.settings.dim}-d index"] if wrong else []

    def add_vectors(self, session: Session, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():  # pgvector would refuse the whole batch; these rows get reconciled away
            log.warning("%d non-finite vector(s) not stored; their photos will be embedded again", int((~finite).sum()))
        rows = [{"id": int(i), "embedding": v} for i, v, ok in zip(ids, np.asarray(vectors, np.float32), finite) if ok]
        if rows:
            session.execute(insert(PhotoVector), rows)

    def remove_vectors(self, ids: list[int]) -> None:
        """Usually a no-op: deleting a photo row deletes its vector (ON DELETE CASCADE)."""
        if not ids:
            return
        with self.errors(), Session(self.engine) as session, session.begin():
            delete_where_in(session, PhotoVector.id, [int(i) for i in ids])

    def save_vectors(self) -> None:
        """Nothing to do: the vectors were committed with their rows."""

    def fresh_vectors(self) -> PgVectors:
        return self.vectors

    def missing_vectors_problem(self) -> str | None:
        return None  # rows and vectors commit together

    def disk_bytes(self) -> int:
        with self.errors(), self.engine.connect() as conn:
            total = conn.execute(
                text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                    "WHERE c.relname IN ('photos', 'failures', 'meta', 'photo_vectors') AND c.relkind = 'r'"
                )
            ).scalar()
        return int(total or 0)


def _create_extension(engine: Engine, location: Location) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as exc:
        if isinstance(exc, OperationalError):
            raise
        raise ConfigError(
            f"the pgvector extension is not available in {display_location(location)} ({str(exc.orig).splitlines()[0]}): "
            "install pgvector on the server, or ask its administrator to run CREATE EXTENSION vector"
        ) from None
