"""`diffsearch stats` / `GET /stats`: what an index holds."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.storage import PhotoIndex
from indexer.storage.rows import Failure
from searcher.results import FailureInfo, IndexStats


def stats_of(index: PhotoIndex, with_failures: bool = False) -> IndexStats:
    counts = index.counts()
    failures: list[FailureInfo] = []
    if with_failures:
        with Session(index.engine) as session:
            failures = [FailureInfo(path=f.path, reason=f.reason) for f in session.scalars(select(Failure))]
    return IndexStats(
        index_dir=index.location,
        photos=counts["photos"],
        vectors=counts["vectors"],
        failures_count=counts["failures"],
        dimension=index.settings.dim,
        index_type=index.vectors.kind,
        model=index.settings.embedding.model,
        fingerprint=index.settings.fingerprint,
        disk_bytes=index.disk_bytes(),
        embedding=index.settings.embedding.to_dict(),
        roots=index.roots()[0],
        failures=failures,
    )


def index_stats(location: str | Path, with_failures: bool = False) -> IndexStats:
    index = PhotoIndex.open(location)
    try:
        return stats_of(index, with_failures)
    finally:
        index.close()
