"""POST /duplicates (start a duplicate search, or get the one running or done) and GET /duplicates (how it goes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from api.dedup_jobs import DedupJob, DedupJobs
from api.deps import SettingsDep, scrub
from api.routers.search import PathPrefix
from api.schemas import DuplicatesResponse, ErrorResponse

router = APIRouter(prefix="/duplicates", tags=["duplicates"])

Limit = Annotated[int, Query(ge=1, le=100_000, description="Return at most this many groups, largest first")]
ERRORS = {404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


def jobs_of(request: Request) -> DedupJobs:
    return request.app.state.dedup_jobs


def answer(jobs: DedupJobs, job: DedupJob, limit: int, response: Response, settings: SettingsDep) -> DuplicatesResponse:
    if job.state == "running":
        response.status_code = 202
        response.headers["Retry-After"] = "1"
    return DuplicatesResponse(
        state=job.state, path_prefix=job.path_prefix, started_at=job.started_at, seconds=round(job.elapsed(), 2),
        verified=job.verified, to_verify=job.to_verify, current=jobs.is_current(job),
        count=len(job.groups), data=job.groups[:limit], detail=None if job.detail is None else scrub(job.detail, settings),
    )  # fmt: skip


@router.post("", response_model=DuplicatesResponse, responses={202: {"model": DuplicatesResponse}, **ERRORS})
def start(request: Request, response: Response, settings: SettingsDep, path_prefix: PathPrefix = None, limit: Limit = 1000) -> DuplicatesResponse:
    """Groups of near-duplicate photos (as `diffsearch dedup`, default rule), found in the background:
    202 while the search runs (ask `GET /duplicates` again), 200 with the groups once done. A done
    search is answered again until the index changes; 409 while a search of other photos runs."""
    jobs = jobs_of(request)
    return answer(jobs, jobs.start(path_prefix), limit, response, settings)


@router.get("", response_model=DuplicatesResponse, responses={202: {"model": DuplicatesResponse}, **ERRORS})
def latest(request: Request, response: Response, settings: SettingsDep, limit: Limit = 1000) -> DuplicatesResponse:
    """The latest duplicate search: 202 while it runs, 200 once done or failed (`state`, `detail`)."""
    jobs = jobs_of(request)
    job = jobs.latest()
    if job is None:
        raise HTTPException(404, "no duplicate search has been started: POST /duplicates starts one")
    return answer(jobs, job, limit, response, settings)
