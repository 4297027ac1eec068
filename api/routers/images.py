"""GET /images/{id} and /images/{id}/thumbnail: only photos that are in the index, by id (never by path);
POST /images/preview: an uploaded photo drawn as a JPEG, for the page to show a query its browser cannot.

A photo is served only while it is still the photo that was indexed: a regular file, inside a
folder that was indexed once links are resolved, with the size and mtime its row records.
Anything else (a file swapped for a link to /etc/passwd, a FIFO, an edited photo) is a 404 or 410.
"""

from __future__ import annotations

import io
import mimetypes
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse

from api.deps import PhotoId, SearcherDep, SettingsDep
from api.routers.search import read_limited
from api.schemas import ErrorResponse
from indexer.errors import InvalidImageError
from indexer.files import is_inside
from indexer.images import NotARegularFileError, load_image, open_regular
from indexer.storage.rows import Photo

router = APIRouter(prefix="/images", tags=["images"])

# Cached thumbnails, by content hash and size, in a folder named for how photos are read: one drawn
# before a change to that is not served (a file's hash does not change with the code). "thumbnails":
# before wide-gamut photos were converted to sRGB (a P3 photo's stayed dull); "thumbnails-srgb":
# before colour code points (a HEIF's or AVIF's nclx box) and 16-bit grays were read as they are
# now. Old folders are only caches; they can be deleted.
THUMBNAIL_DIR = "thumbnails-3"
CHUNK = 1 << 16
RESPONSES = {404: {"description": "Unknown id, or its file is gone"}, 410: {"description": "The file is no longer the indexed photo"}}
ThumbnailSize = Annotated[int, Query(ge=16, le=1024, description="The longer side, at most (pixels)")]


def _open_indexed(searcher: SearcherDep, photo_id: int) -> tuple[Photo, IO[bytes]]:
    """The row and an open handle on its file, after checking the file is still that photo."""
    row = searcher.photo(photo_id)
    if row is None:
        raise HTTPException(404, f"no photo with id {photo_id} in the index")
    roots, followed_links = searcher.index.roots()
    real = os.path.realpath(row.path)
    if roots:
        allowed = followed_links or any(is_inside(real, os.path.realpath(root)) for root in roots)
    else:  # an index from before roots were recorded: no links at all
        allowed = real == os.path.abspath(row.path)
    if not allowed:
        raise HTTPException(410, f"photo {photo_id} now points outside the indexed folders; re-index to refresh it")
    try:
        handle = open_regular(real)
    except FileNotFoundError:
        raise HTTPException(404, f"photo {photo_id} is in the index but its file is gone") from None
    except (NotARegularFileError, PermissionError, OSError):
        raise HTTPException(410, f"photo {photo_id}'s file can no longer be read as the indexed photo") from None
    info = os.fstat(handle.fileno())
    if info.st_size != row.size or info.st_mtime != row.mtime:
        handle.close()
        raise HTTPException(410, f"photo {photo_id} changed since it was indexed; run `diffsearch index` to refresh it")
    return row, handle


def _stream(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


@router.get("/{photo_id}", response_class=StreamingResponse, responses=RESPONSES)
def image(searcher: SearcherDep, photo_id: PhotoId) -> StreamingResponse:
    row, handle = _open_indexed(searcher, photo_id)
    media_type = mimetypes.guess_type(row.path)[0] or "application/octet-stream"
    headers = {"Content-Length": str(row.size), "Cache-Control": "private, max-age=3600"}
    return StreamingResponse(_stream(handle), media_type=media_type, headers=headers)


def _render_thumbnail(handle: IO[bytes], size: int) -> bytes:
    with handle:
        # A JPEG decodes reduced, as thumbnail() would; a HEIC from an embedded thumbnail at least as
        # large as a 4:3 photo is shown (an iPhone's 320 x 240 for the page's 256), not in full.
        image, _ = load_image(handle, min_side=2 * size, thumbnail_side=3 * size // 4)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def _cache(target: Path, data: bytes) -> bool:
    """Write the thumbnail under a unique temp name, then rename: concurrent writers never collide.
    False where the index folder is read-only (the thumbnail is then served from memory)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
        return True
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False


@router.get("/{photo_id}/thumbnail", response_class=Response, responses=RESPONSES)
async def thumbnail(searcher: SearcherDep, photo_id: PhotoId, size: ThumbnailSize = 256) -> Response:
    row, handle = await run_in_threadpool(_open_indexed, searcher, photo_id)
    # Keyed by content hash: a changed photo gets a new thumbnail, never a stale one.
    cache = searcher.index.cache_dir  # None (a Postgres index): no shared folder, render each time
    target = cache / THUMBNAIL_DIR / f"{row.content_hash}-{size}.jpg" if cache else None
    headers = {"Cache-Control": "max-age=86400"}
    if target is not None and target.is_file():
        handle.close()
        return FileResponse(target, media_type="image/jpeg", headers=headers)
    try:
        data = await run_in_threadpool(_render_thumbnail, handle, size)
    except InvalidImageError as exc:
        raise HTTPException(422, f"photo {photo_id} can no longer be read: {exc.reason}") from None
    if target is not None and not searcher.index.read_only:
        await run_in_threadpool(_cache, target, data)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.post(
    "/preview", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, 400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}}
)
async def preview(settings: SettingsDep, file: Annotated[UploadFile, File(description="A photo")], size: ThumbnailSize = 256) -> Response:
    """The uploaded photo drawn as a JPEG of at most `size` pixels a side, turned as shown: for a
    page to show a query photo its browser cannot (HEIC in most browsers, TIFF). Nothing is kept."""
    data = await read_limited(file, int(settings.max_upload_mb * 2**20))
    return Response(await run_in_threadpool(_render_thumbnail, io.BytesIO(data), size), media_type="image/jpeg")
