"""The FastAPI application: model loaded once at start-up, library errors mapped to 4xx in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from api.routers import images, search, status
from indexer.errors import (
    ConfigError,
    DiffsearchError,
    IndexMismatchError,
    IndexNotFoundError,
    InvalidImageError,
)
from indexer.settings import Settings
from searcher.searcher import Searcher

STATIC = Path(__file__).resolve().parent / "static"

STATUS_FOR = {
    InvalidImageError: 400,
    ConfigError: 422,
    IndexNotFoundError: 404,
    IndexMismatchError: 409,
}


def create_app(settings: Settings, searcher: Searcher | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.searcher = searcher or Searcher(settings.index_dir, settings.runtime())
        yield
        if searcher is None:
            app.state.searcher.close()

    app = FastAPI(title="diffsearch", summary="Find similar photos with a diffusion model.", lifespan=lifespan)
    app.include_router(search.router)
    app.include_router(images.router)
    app.include_router(status.router)

    @app.exception_handler(DiffsearchError)
    async def diffsearch_error(_request: Request, exc: DiffsearchError) -> JSONResponse:
        code = next((c for kind, c in STATUS_FOR.items() if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
