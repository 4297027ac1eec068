"""Shared FastAPI dependencies (the one Searcher and the settings, set up in the app's lifespan) and
the scrubbing of server paths from what clients are told."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import Depends, Path, Request

from indexer.settings import Settings
from indexer.storage import display_location
from searcher.searcher import Searcher


def get_searcher(request: Request) -> Searcher:
    return request.app.state.searcher


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SearcherDep = Annotated[Searcher, Depends(get_searcher)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

# SQLite row ids (and so FAISS ids) are positive signed 64-bit integers.
PhotoId = Annotated[int, Path(ge=1, le=2**63 - 1, description="An indexed photo's id")]


def scrub(message: str, settings: Settings) -> str:
    """The message without the server's index path or database URL (clients learn nothing of the server)."""
    where = {str(FilePath(settings.index_dir).absolute()), str(settings.index_dir)}
    if settings.database:
        where |= {settings.database, display_location(settings.database)}
    for path in sorted(where, key=len, reverse=True):
        message = message.replace(path, "<index>")
    return message
