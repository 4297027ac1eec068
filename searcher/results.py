"""Typed results of the read path (pydantic, so the HTTP layer can serialise them as they are)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from indexer.storage.rows import Photo


class SearchResult(BaseModel):
    id: int
    path: str
    distance: float  # Euclidean distance between unit vectors, in [0, 2]
    score: float  # cosine similarity, 1 - distance^2 / 2, in [-1, 1]
    width: int
    height: int
    taken_at: datetime | None = None
    # How well the query's centre matches somewhere in this photo (searcher.rerank), in [-1, 1];
    # set on the results a search re-ranked, None elsewhere.
    match: float | None = None

    @classmethod
    def from_row(cls, row: Photo, distance: float) -> SearchResult:
        return cls(
            id=row.id, path=row.path, distance=distance, score=1.0 - distance**2 / 2.0,
            width=row.width, height=row.height, taken_at=row.taken_at,
        )  # fmt: skip


class FailureInfo(BaseModel):
    path: str
    reason: str


class IndexStats(BaseModel):
    index_dir: str
    photos: int
    vectors: int
    failures_count: int
    dimension: int
    index_type: str
    model: str
    fingerprint: str
    disk_bytes: int
    embedding: dict
    roots: list[str] = []  # the folders and files indexed here (what `index` was given)
    failures: list[FailureInfo] = []


class DuplicateGroup(BaseModel):
    photos: list[SearchResult]  # the copy to keep first (searcher.dedup.keep_order), then the rest nearest first; distances are to the first
