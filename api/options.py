"""What every command shares: the Typer app, common options, settings from flags, the error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from indexer.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Find similar photos with a diffusion model.")

IndexOpt = Annotated[Optional[Path], typer.Option("--index", "-i", help="Index folder [env DIFFSEARCH_INDEX_DIR; default ./diffsearch-index]")]
DatabaseOpt = Annotated[
    Optional[str],
    typer.Option("--database", help="postgresql+psycopg://... : keep the index in Postgres + pgvector instead of --index [env DIFFSEARCH_DATABASE]"),
]
ModelOpt = Annotated[Optional[str], typer.Option(help="Model: 'default', a diffusers folder, or a hub id")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def load_settings(**flags: object) -> Settings:
    if isinstance(flags.get("blocks"), str):
        flags["blocks"] = tuple(b.strip() for b in str(flags["blocks"]).split(",") if b.strip())
    return Settings.load(**flags)


def fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
