"""HTTP request/response schemas (kept apart from the database tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from searcher.results import DuplicateGroup, SearchResult


class SearchResponse(BaseModel):
    data: list[SearchResult]
    count: int


class Health(BaseModel):
    status: str  # "ok" or "degraded"
    photos: int
    detail: str | None = None


class ErrorResponse(BaseModel):
    detail: str


class DuplicatesResponse(BaseModel):
    """A duplicate search (api.dedup_jobs): its state, its progress, and its groups once done."""

    state: Literal["running", "done", "failed"]
    path_prefix: str | None  # the photos it looks at (None: all)
    started_at: datetime
    seconds: float  # how long it has run, or ran
    verified: int  # photos whose pairs are verified so far, of `to_verify` (0 of 0 until that starts)
    to_verify: int
    current: bool  # false once the index has changed since it started: start it again for new groups
    count: int  # how many groups it found
    data: list[DuplicateGroup]  # the groups, largest first (at most `limit` of them); each starts with the copy to keep
    detail: str | None = None  # why it failed
