"""HTTP request/response schemas (kept apart from the database tables)."""

from __future__ import annotations

from pydantic import BaseModel

from searcher.results import SearchResult


class SearchResponse(BaseModel):
    data: list[SearchResult]
    count: int


class Health(BaseModel):
    status: str  # "ok" or "degraded"
    photos: int
    detail: str | None = None


class ErrorResponse(BaseModel):
    detail: str
