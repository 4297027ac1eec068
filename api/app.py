"""The FastAPI application: model loaded once at start-up, library errors mapped to HTTP codes in one place.

Client mistakes are 4xx; faults of the server's own index (damaged, unreadable, read-only when it
must write) are 503 with a message: never a bare 500, never blamed on the client. Error bodies
name no server paths. Only the configured Host names are answered (DNS rebinding), and the API
docs are served from the package, so /docs works offline.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import FileResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.middleware.trustedhost import TrustedHostMiddleware

from api.dedup_jobs import DedupBusyError, DedupJobs
from api.deps import scrub
from api.guards import BodyLimit, SecurityHeaders
from api.routers import duplicates, images, metrics, search, status
from indexer.errors import (
    DatabaseUnavailableError,
    ConfigError,
    DiffsearchError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexReadOnlyError,
    InvalidImageError,
)
from indexer.settings import Settings
from searcher.batching import QueueFullError
from searcher.searcher import Searcher

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"

STATUS_FOR = {
    InvalidImageError: 400,
    ConfigError: 422,
    DedupBusyError: 409,
    IndexNotFoundError: 503,  # the server's own index vanished: not the client's fault
    IndexMismatchError: 503,
    IndexCorruptError: 503,
    IndexReadOnlyError: 503,
    QueueFullError: 503,
    DatabaseUnavailableError: 503,
}


def create_app(settings: Settings, searcher: Searcher | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.searcher = searcher or Searcher.from_settings(settings)
        batching = settings.batching and app.state.searcher.queue is None
        if batching:
            app.state.searcher.start_batching(settings.batch_size, settings.batch_wait_ms, settings.max_queue)
        app.state.dedup_jobs = DedupJobs(app.state.searcher, settings)
        yield
        app.state.dedup_jobs.close()
        if batching:
            app.state.searcher.stop_batching()
        if searcher is None:
            app.state.searcher.close()

    app = FastAPIOffline(title="diffsearch", summary="Find similar photos with a diffusion model.", lifespan=lifespan)
    app.include_router(search.router)
    app.include_router(images.router)
    app.include_router(duplicates.router)
    app.include_router(status.router)
    app.include_router(metrics.router)
    app.add_middleware(BodyLimit, limit_bytes=int(settings.max_upload_mb * 2**20))
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_host_names()))
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(DiffsearchError)
    async def diffsearch_error(_request: Request, exc: DiffsearchError) -> JSONResponse:
        code = next((c for kind, c in STATUS_FOR.items() if isinstance(exc, kind)), 503)
        headers = {"Retry-After": "1" if isinstance(exc, QueueFullError) else "30"} if code == 503 else None
        return JSONResponse({"detail": scrub(str(exc), settings)}, status_code=code, headers=headers)

    @app.exception_handler(Exception)
    async def server_fault(_request: Request, exc: Exception) -> JSONResponse:
        # A fault of the server (a database error, a full disk): logged in full, answered in one line.
        log.exception("server fault")
        detail = f"the server cannot answer right now ({type(exc).__name__}); its log has the details"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": scrub(str(exc.detail), settings)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
