"""GET /images/{id} and /images/{id}/thumbnail: only photos that are in the index, by id (never by path)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from api.deps import PhotoId, SearcherDep
from indexer.errors import InvalidImageError
from indexer.images import load_image
from indexer.store import Photo

router = APIRouter(prefix="/images", tags=["images"])

THUMBNAIL_DIR = "thumbnails"


def _indexed_file(searcher: SearcherDep, photo_id: PhotoId) -> Photo:
    row = searcher.photo(photo_id)
    if row is None:
        raise HTTPException(404, f"no photo with id {photo_id} in the index")
    if not Path(row.path).is_file():
        raise HTTPException(404, f"photo {photo_id} is in the index but its file is gone: {row.path}")
    return row


@router.get("/{photo_id}", response_class=FileResponse, responses={404: {"description": "Unknown id"}})
def image(searcher: SearcherDep, photo_id: PhotoId) -> FileResponse:
    return FileResponse(_indexed_file(searcher, photo_id).path)


def _make_thumbnail(source: str, target: Path, size: int) -> None:
    image, _ = load_image(source)
    image.thumbnail((size, size))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    image.save(tmp, "JPEG", quality=85)
    tmp.replace(target)


@router.get("/{photo_id}/thumbnail", response_class=FileResponse, responses={404: {"description": "Unknown id"}})
async def thumbnail(
    searcher: SearcherDep, photo_id: PhotoId, size: Annotated[int, Query(ge=16, le=1024)] = 256
) -> FileResponse:
    row = _indexed_file(searcher, photo_id)
    # Keyed by content hash: a changed photo gets a new thumbnail, never a stale one.
    target = searcher.index.dir / THUMBNAIL_DIR / f"{row.content_hash}-{size}.jpg"
    if not target.is_file():
        try:
            await run_in_threadpool(_make_thumbnail, row.path, target, size)
        except InvalidImageError as exc:
            raise HTTPException(422, f"photo {photo_id} can no longer be read: {exc.reason}") from None
    return FileResponse(target, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})
