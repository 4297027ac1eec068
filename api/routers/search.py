"""POST /search (upload a photo) and GET /search/similar/{id} (more like an indexed photo)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool

from api.deps import PhotoId, SearcherDep, SettingsDep
from api.schemas import ErrorResponse, SearchResponse
from searcher.searcher import MAX_K

router = APIRouter(prefix="/search", tags=["search"])

K = Annotated[int, Query(ge=1, le=MAX_K, description="How many results")]
MaxDistance = Annotated[float | None, Query(ge=0, le=2, description="Drop results farther than this")]
PathPrefix = Annotated[str | None, Query(max_length=4096, description="Only photos under this folder")]
Mirror = Annotated[
    bool | None, Query(description="Also search as the left-right mirror, so mirrored copies are found (default: the server's setting, on)")
]
Rerank = Annotated[
    int | None,
    Query(ge=0, le=MAX_K, description="Re-rank this many nearest photos by where the query sits in each, so crops and re-framed copies come first; 0: off (default: the server's setting, 100)"),
]
Expand = Annotated[
    int | None,
    Query(ge=0, le=MAX_K, description="After re-ranking, order the rest by the query expanded with this many first results, so photos like the best match come next; 0: off (default: the server's setting, 2)"),
]
ERRORS = {400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}


async def read_limited(upload: UploadFile, limit_bytes: int) -> bytes:
    """The upload's bytes, or 413 as soon as it passes the limit (never buffers more than limit + 1 MiB)."""
    chunks, total = [], 0
    while chunk := await upload.read(1 << 20):
        total += len(chunk)
        if total > limit_bytes:
            raise HTTPException(413, f"upload is larger than the {limit_bytes / 2**20:.0f} MiB limit")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    return data


@router.post("", response_model=SearchResponse, responses=ERRORS)
async def search_upload(
    searcher: SearcherDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The query photo")],
    k: K = 10,
    max_distance: MaxDistance = None,
    path_prefix: PathPrefix = None,
    mirror: Mirror = None,
    rerank: Rerank = None,
    expand: Expand = None,
) -> SearchResponse:
    data = await read_limited(file, int(settings.max_upload_mb * 2**20))
    results = await run_in_threadpool(searcher.query, data, k, max_distance, path_prefix, mirror, rerank, expand)
    return SearchResponse(data=results, count=len(results))


@router.get("/similar/{photo_id}", response_model=SearchResponse, responses=ERRORS)
def search_similar(
    searcher: SearcherDep, photo_id: PhotoId, k: K = 10, max_distance: MaxDistance = None, path_prefix: PathPrefix = None
) -> SearchResponse:
    try:
        results = searcher.query_id(photo_id, k, max_distance, path_prefix)
    except KeyError:
        raise HTTPException(404, f"no photo with id {photo_id} in the index") from None
    return SearchResponse(data=results, count=len(results))
