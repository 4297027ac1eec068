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


@router.get("/health", response_model=Health, response_model_exclude_none=True)
def health(searcher: SearcherDep) -> Health:
    """ok, or degraded (with the reason) when the rows and vectors disagree or the vectors are missing."""
    counts = searcher.counts()
    if counts["photos"] == counts["vectors"]:
        return Health(status="ok", photos=counts["photos"])
    detail = (
        f"{counts['photos']} photo rows but {counts['vectors']} vectors"
        + ("; the vectors file is missing" if searcher.index.missing_vectors_problem() else "")
        + ": run `diffsearch check --repair` (a running indexer may also be between two saves)"
    )
    return Health(status="degraded", photos=counts["photos"], detail=detail)
