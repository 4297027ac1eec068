"""GET /stats and GET /health."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SearcherDep
from api.schemas import Health
from searcher.results import IndexStats
from searcher.stats import stats_of

router = APIRouter(tags=["status"])


@router.get("/stats", response_model=IndexStats)
def stats(searcher: SearcherDep) -> IndexStats:
    return stats_of(searcher.index)


@router.get("/health", response_model=Health)
def health(searcher: SearcherDep) -> Health:
    return Health(status="ok", photos=len(searcher))
