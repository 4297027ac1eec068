"""Shared FastAPI dependencies: the one Searcher and the settings, set up in the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from indexer.settings import Settings
from searcher.searcher import Searcher


def get_searcher(request: Request) -> Searcher:
    return request.app.state.searcher


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SearcherDep = Annotated[Searcher, Depends(get_searcher)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

# SQLite row ids (and so FAISS ids) are positive signed 64-bit integers.
PhotoId = Annotated[int, Path(ge=1, le=2**63 - 1, description="An indexed photo's id")]
