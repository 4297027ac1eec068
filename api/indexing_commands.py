"""CLI commands of the write path: index, check, stats."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from api.options import DatabaseOpt, DeviceOpt, IndexOpt, JsonOpt, ModelOpt, app, fail, load_settings
from indexer.errors import DiffsearchError
from indexer.storage import display_location


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the work is, so it checkpoints exactly like Ctrl-C does."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated()


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Photo folders or files")],
    index_dir: IndexOpt = None,
    database: DatabaseOpt = None,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="Drop photos deleted from the given folders")] = True,
    follow_symlinks: Annotated[bool, typer.Option(help="Follow symlinked folders (loops are walked once)")] = False,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Leave out folders and files with this name (fnmatch pattern; repeat for more)")] = None,
    default_excludes: Annotated[Optional[bool], typer.Option("--default-excludes/--no-default-excludes", help="Also leave out @eaDir, #recycle, $RECYCLE.BIN ... [default: on]")] = None,
    index_type: Annotated[Optional[str], typer.Option(help="FAISS index_factory string: Flat, IVF256,Flat, HNSW32, IVF256,PQ32 ...")] = None,
    model: ModelOpt = None,
    image_size: Annotated[Optional[int], typer.Option(help="Square side the photo is cropped to")] = None,
    timestep: Annotated[Optional[int], typer.Option(help="Diffusion timestep features are read at")] = None,
    inversion_steps: Annotated[Optional[int], typer.Option(help="DDIM inversion steps to the timestep")] = None,
    blocks: Annotated[Optional[str], typer.Option(help="Comma-separated feature sources: latent,mid,up.0,...")] = None,
    grid: Annotated[Optional[int], typer.Option(help="g x g spatial pooling grid")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto, bfloat16 or float32 (speed only; the vectors agree)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per model call")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decoding worker processes")] = None,
    device: DeviceOpt = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Commit progress every N photos")] = None,
    allow_download: Annotated[Optional[bool], typer.Option("--allow-download", help="Let a hub id download (needs internet)")] = None,
    engine: Annotated[Optional[str], typer.Option(help="local, or ray: decode and embed on a Ray cluster (the [distributed] extra)")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join: auto, ray://HOST:10001 [default: start Ray here]")] = None,
) -> None:
    """Index photo folders (incremental: only new or changed photos are embedded)."""
    from indexer.indexing import index_photos

    try:
        settings = load_settings(
            index_dir=index_dir, database=database, index_type=index_type, model=model, image_size=image_size, timestep=timestep,
            inversion_steps=inversion_steps, blocks=blocks, grid=grid, dtype=dtype, batch_size=batch_size,
            workers=workers, device=device, checkpoint_every=checkpoint_every, follow_symlinks=follow_symlinks or None,
            exclude=",".join(exclude) if exclude else None, default_excludes=default_excludes,
            allow_download=allow_download, engine=engine, ray_address=ray_address,
        )  # fmt: skip
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            summary = index_photos(paths, settings, prune=prune)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except DiffsearchError as exc:
        fail(exc)
        return
    typer.echo(
        f"added {summary.added}, updated {summary.updated}, moved {summary.moved}, removed {summary.removed}, "
        f"unchanged {summary.unchanged}, skipped {summary.skipped} (known bad), failed {summary.failed} "
        f"in {summary.seconds:.1f} s ({summary.images_per_second:.1f} img/s) -> {display_location(settings.location)}"
    )
    if summary.excluded:
        typer.echo(f"  {len(summary.excluded)} folder(s) or photo(s) left out by exclude patterns ({', '.join(settings.exclude_patterns)})")
    if summary.symlinks_skipped:
        typer.echo(f"  {summary.symlinks_skipped} symbolic link(s) not followed (use --follow-symlinks)")
    for path, reason in summary.failures[:20]:
        typer.echo(f"  failed: {path}: {reason}")
    if len(summary.failures) > 20:
        typer.echo(f"  ... and {len(summary.failures) - 20} more (see `diffsearch stats --failures`)")
    if summary.kept:
        typer.echo(f"  kept {summary.kept} indexed photo(s) under folders that could not be read (not pruned)")
    if summary.missing_roots:
        typer.secho(f"error: not found, nothing under it was pruned: {', '.join(summary.missing_roots)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def check(
    index_dir: IndexOpt = None,
    database: DatabaseOpt = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix whatever is damaged (re-embeds what it must)")] = False,
    device: DeviceOpt = None,
) -> None:
    """Verify the index: SQLite's integrity check, every vector has a row and every row a finite vector."""
    from indexer.storage import PhotoIndex

    settings = load_settings(index_dir=index_dir, database=database, device=device)
    if repair:
        from indexer.indexing import embedder_for
        from indexer.repair import repair_index

        try:
            done = repair_index(settings.location, lambda stored: embedder_for(settings, stored.embedding), settings.follow_symlinks)
        except DiffsearchError as exc:
            fail(exc)
            return
        for action in done.actions:
            typer.echo(f"  {action}")
    try:
        index = PhotoIndex.open(settings.location)
        try:
            report = index.consistency(thorough=True)
        finally:
            index.close()
    except DiffsearchError as exc:
        fail(exc)
        return
    state = ("repaired" if repair and done.changed else "consistent") if report.ok else "INCONSISTENT"
    typer.echo(f"{state}: {report.describe()}")
    if not report.ok:
        if not repair:
            typer.echo("run `diffsearch check --repair` to fix it")
        raise typer.Exit(1)


@app.command()
def stats(index_dir: IndexOpt = None, database: DatabaseOpt = None, as_json: JsonOpt = False, failures: Annotated[bool, typer.Option(help="List failed files")] = False) -> None:
    """Counts, dimension, index type, disk size and embedding settings."""
    from searcher.stats import index_stats

    try:
        info = index_stats(load_settings(index_dir=index_dir, database=database).location, with_failures=failures)
    except DiffsearchError as exc:
        fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(info.model_dump(), indent=2, default=str))
        return
    for key, value in info.model_dump(exclude={"failures", "embedding"}).items():
        typer.echo(f"{key:>16}: {', '.join(value) if isinstance(value, list) else value}")
    typer.echo(f"{'embedding':>16}: {json.dumps(info.embedding)}")
    for failure in info.failures:
        typer.echo(f"  failed: {failure.path}: {failure.reason}")
