"""CLI commands of the read path and the model: query, dedup, serve, up, train, eval."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from api.indexing_commands import index as index_command
from api.options import DatabaseOpt, DeviceOpt, IndexOpt, JsonOpt, app, fail, load_settings
from indexer.bundled import DATA_DIR
from indexer.errors import DiffsearchError, InvalidImageError
from indexer.settings import Settings
from indexer.storage import display_location, is_database_url
from searcher.dedup_rule import DEFAULT_CAP, DEFAULT_GAP, DEFAULT_MATCH_WEIGHT, DEFAULT_THRESHOLD, VECTORS_ONLY

SAMPLES = DATA_DIR / "samples"


def _listing(items: list) -> dict:
    """A list of pydantic models as the API's {data, count} object."""
    return {"data": [i.model_dump(mode="json") for i in items], "count": len(items)}


def _echo_list(items: list) -> None:
    typer.echo(json.dumps(_listing(items), indent=2))


@app.command()
def query(
    images: Annotated[list[Path], typer.Argument(help="The query photo, or several: the model loads once for all of them; - reads one from standard input")],
    k: Annotated[int, typer.Option("-k", help="How many results")] = 10,
    max_distance: Annotated[Optional[float], typer.Option(help="Drop results farther than this")] = None,
    path_prefix: Annotated[Optional[str], typer.Option(help="Only photos under this folder")] = None,
    mirror: Annotated[Optional[bool], typer.Option("--mirror/--no-mirror", help="Also search as the left-right mirror, to find mirrored copies [env DIFFSEARCH_MIRROR_QUERIES; default on]")] = None,
    rerank: Annotated[Optional[int], typer.Option(min=0, help="Re-rank this many nearest by where the photo sits in each, so crops and re-framed copies come first; 0: off [env DIFFSEARCH_RERANK; default 100]")] = None,
    expand: Annotated[Optional[int], typer.Option(min=0, help="After re-ranking, order the rest by the query expanded with this many first results, so photos like the best match come next; 0: off [env DIFFSEARCH_EXPAND; default 2]")] = None,
    server: Annotated[bool, typer.Option("--server/--no-server", help="Ask a `diffsearch serve` running on this index folder, which has the model loaded (~13 s less on 2 cores); --no-server: always search here")] = True,
    index_dir: IndexOpt = None,
    database: DatabaseOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the photos most similar to IMAGE (or to each of several).

    With several, each query's results follow a `query N/M: PATH` line (--json: one object per
    query under `queries`); a photo that cannot be read is named on stderr and skipped, the others
    are answered, and the exit status is 1 (2 when none could be read). Where a server runs on the
    index folder (`serve`, `up`), it answers, with this command's settings (api/running_server.py)."""
    settings = load_settings(index_dir=index_dir, database=database, device=device, mirror_queries=mirror, rerank=rerank, expand=expand)
    answered: list[tuple[int, Path, list]] = []  # (its number among the images, the image, its results)
    skipped: list[InvalidImageError] = []
    try:
        with _Answerer(settings, server and device is None) as answerer:
            for n, image in enumerate(images, 1):
                try:
                    source = _stdin_photo() if str(image) == "-" else image
                    answered.append((n, image, answerer.query(source, k, max_distance, path_prefix)))
                except InvalidImageError as exc:
                    if len(images) == 1:
                        raise
                    skipped.append(exc)
                    typer.secho(f"skipped: {exc}", fg=typer.colors.YELLOW, err=True)
    except DiffsearchError as exc:
        fail(exc)
        return
    if len(images) == 1:
        _echo_results(answered[0][2], as_json)
        return
    if as_json:
        queries = [{"query": str(image), **_listing(results)} for _, image, results in answered]
        failed = [{"path": exc.source, "reason": exc.reason} for exc in skipped]
        typer.echo(json.dumps({"queries": queries, "count": len(queries), "failed": failed}, indent=2))
    else:
        for n, image, results in answered:
            typer.echo(f"{'' if n == answered[0][0] else chr(10)}query {n}/{len(images)}: {image}")
            _echo_results(results, False)
    if skipped:
        typer.secho(f"{len(skipped)} of {len(images)} query photos could not be read", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(2 if not answered else 1)


class _Answerer:
    """Answers `query`'s photos: the server running on the index folder while it answers, else a
    Searcher here, opened (model loaded) only when first needed."""

    def __init__(self, settings: Settings, ask_server: bool) -> None:
        from api.running_server import find_server

        self.settings = settings
        self.server = find_server(settings.index_dir) if ask_server and not is_database_url(settings.location) else None
        self.searcher = None
        if self.server:
            typer.secho(f"asking the server at {self.server.url} (--no-server: search here)", err=True, fg=typer.colors.BRIGHT_BLACK)

    def query(self, source: Path | io.BytesIO, k: int, max_distance: float | None, path_prefix: str | None) -> list:
        answered = self._ask_server(source, k, max_distance, path_prefix) if self.server is not None else None
        if answered is not None:
            return answered
        if self.searcher is None:
            from searcher.searcher import Searcher

            self.searcher = Searcher.from_settings(self.settings)
        return self.searcher.query(source, k, max_distance, path_prefix)

    def _ask_server(self, source: Path | io.BytesIO, k: int, max_distance: float | None, path_prefix: str | None) -> list | None:
        """The server's results; None to search here (a photo over its upload limit, or a server
        that did not answer, which is not asked again)."""
        from api.running_server import PhotoRefused, ServerUnavailable

        assert self.server is not None
        s = self.settings
        photo = _read_photo(source, int(s.max_upload_mb * 2**20))
        if photo is None:
            return None
        try:
            return self.server.query(photo, str(getattr(source, "name", source)), k, max_distance, path_prefix, s.mirror_queries, s.rerank, s.expand)
        except PhotoRefused as exc:
            typer.secho(f"the server refused this photo ({exc}): searching here", err=True, fg=typer.colors.YELLOW)
        except ServerUnavailable as exc:
            typer.secho(f"the server did not answer ({exc}): searching here", err=True, fg=typer.colors.YELLOW)
            self.server.close()
            self.server = None
        return None

    def __enter__(self) -> _Answerer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
        if self.searcher is not None:
            self.searcher.close()


def _read_photo(source: Path | io.BytesIO, limit: int) -> bytes | None:
    """The photo's bytes to send to a server; None for one over the server's upload limit or a file
    that cannot be read now (the Searcher here then searches it, or names why it cannot). What is
    not a file (missing, a folder) raises InvalidImageError as a search here would."""
    if isinstance(source, io.BytesIO):
        return source.getvalue() if len(source.getvalue()) <= limit else None
    if not Path(source).is_file():
        from indexer.images import load_image

        load_image(source)  # raises why it cannot be read, without loading a model
        return None
    try:
        return Path(source).read_bytes() if Path(source).stat().st_size <= limit else None
    except OSError:
        return None


def _stdin_photo() -> io.BytesIO:
    """The photo piped to standard input (`xclip -o -t image/png | diffsearch query -`), named so in errors."""
    photo = io.BytesIO(sys.stdin.buffer.read())
    photo.name = "standard input"
    return photo


def _echo_results(results: list, as_json: bool) -> None:
    """One query's results: the API's {data, count} JSON, or a table (rank, distance, match, path)."""
    if as_json:
        _echo_list(results)
        return
    for rank, r in enumerate(results, 1):
        match = f"  match {r.match:.3f}" if r.match is not None else ""
        typer.echo(f"{rank:>3}  {r.distance:.4f}{match}  {r.path}")


@app.command()
def dedup(
    threshold: Annotated[Optional[float], typer.Option(help=f"distance under which two photos are always duplicates (default {DEFAULT_THRESHOLD:.2f} verified, {VECTORS_ONLY.threshold:.2f} vectors alone)")] = None,
    gap: Annotated[Optional[float], typer.Option(help=f"also a photo's nearest photos before a jump d_j <= gap * d_(j+1), for heavier edits; 0: the threshold alone (default {DEFAULT_GAP:.2f} verified, {VECTORS_ONLY.gap:.2f} vectors alone)")] = None,
    cap: Annotated[Optional[float], typer.Option(help=f"the gap test never links photos further apart than this (default {DEFAULT_CAP:.2f} verified, {VECTORS_ONLY.cap:.2f} vectors alone)")] = None,
    match_weight: Annotated[Optional[float], typer.Option(help=f"verify each pair spatially (the kept latents match; no file is read): distances become sqrt(d^2 + weight x (1 - match)); 0: vectors alone, faster (default {DEFAULT_MATCH_WEIGHT:.2f}; vectors alone where the index keeps no latents)")] = None,
    path_prefix: Annotated[Optional[str], typer.Option(help="Only photos whose path starts with this (a folder): duplicates among them, in a fraction of the time")] = None,
    index_dir: IndexOpt = None,
    database: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Groups of near-duplicate photos in the index."""
    from searcher.dedup import can_verify, find_duplicates
    from searcher.dedup_rule import default_rule
    from searcher.searcher import Searcher

    settings = load_settings(index_dir=index_dir, database=database)
    try:
        with Searcher(settings.location, settings.runtime_options()) as searcher:
            rule = default_rule(can_verify(searcher), threshold=threshold, gap=gap, cap=cap, match_weight=match_weight)
            groups = find_duplicates(searcher, rule, path_prefix)
    except DiffsearchError as exc:
        fail(exc)
        return
    if as_json:
        _echo_list(groups)
        return
    kind = f"verified distance (match weight {rule.match_weight})" if rule.match_weight else "distance"
    also = ", and very close pairs by the vectors alone" if rule.match_weight else ""
    typer.echo(f"{len(groups)} group(s): {kind} <= {rule.threshold}" + (f", or before a gap of {rule.gap} up to {rule.cap}" if rule.gap else "") + also)
    if groups:
        typer.echo("each group: the copy to keep (most pixels, then oldest file, then largest), then its copies by distance from it")
    for n, group in enumerate(groups, 1):
        keep, *copies = group.photos
        typer.echo(f"group {n} ({len(group.photos)} photos)")
        typer.echo(f"  keep    {keep.path}  ({keep.width}x{keep.height})")
        for photo in copies:
            typer.echo(f"  {photo.distance:.4f}  {photo.path}  ({photo.width}x{photo.height})")


@app.command()
def serve(
    index_dir: IndexOpt = None,
    database: DatabaseOpt = None,
    host: Annotated[Optional[str], typer.Option(help="Address to bind [default 127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port [default 8000]")] = None,
    device: DeviceOpt = None,
    max_upload_mb: Annotated[Optional[float], typer.Option(help="Largest query upload [default 20]")] = None,
    allowed_hosts: Annotated[Optional[str], typer.Option(help="Extra Host names to answer, comma-separated ('*': any)")] = None,
) -> None:
    """Serve the HTTP API and the web page for an index."""
    import uvicorn

    from api.app import create_app
    from api.running_server import recorded
    from indexer.storage import PhotoIndex

    settings = load_settings(index_dir=index_dir, database=database, host=host, port=port, device=device, max_upload_mb=max_upload_mb, allowed_hosts=allowed_hosts)
    try:
        PhotoIndex.open(settings.location).close()  # fail here, clearly, not inside the server
    except DiffsearchError as exc:
        fail(exc)
        return
    typer.echo(f"diffsearch: serving {display_location(settings.location)} at http://{settings.host}:{settings.port}/ (Ctrl-C stops)")
    # Recorded in the index folder, `query` on it asks this server instead of loading the model.
    with contextlib.nullcontext() if is_database_url(settings.location) else recorded(settings.index_dir, settings.host, settings.port):
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


@app.command()
def up(
    folder: Annotated[Optional[Path], typer.Argument(help="Photo folder [default: the bundled sample photos]")] = None,
    index_dir: IndexOpt = None,
    database: DatabaseOpt = None,
    host: Annotated[Optional[str], typer.Option(help="Address to bind [default 127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port [default 8000]")] = None,
) -> None:
    """Index FOLDER (or the sample photos), then serve it: the one-command demo."""
    index_command([folder or SAMPLES], index_dir=index_dir, database=database)
    serve(index_dir=index_dir, database=database, host=host, port=port)


@app.command()
def train(
    photos: Annotated[list[Path], typer.Argument(help="Photo folders or files to train on")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="Model folder to write")] = Path("diffsearch-model"),
    photo_list: Annotated[Optional[Path], typer.Option("--list", help="A list file of photo paths (one per line)")] = None,
    list_root: Annotated[Optional[Path], typer.Option(help="Folder the --list paths are relative to")] = None,
    run_dir: Annotated[Path, typer.Option(help="Checkpoints, cached latents and logs")] = Path("runs/train"),
    minutes: Annotated[float, typer.Option(help="Wall-clock budget")] = 60.0,
    steps: Annotated[int, typer.Option(help="Step budget (and the LR schedule's length)")] = 6000,
    batch_size: Annotated[int, typer.Option(help="Latents per step")] = 64,
    image_size: Annotated[int, typer.Option(help="Training crop side in pixels (latents are 1/8)")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from run-dir's checkpoint")] = False,
    class_weight: Annotated[float, typer.Option(help="Weight of the auxiliary class loss; a photo's folder is its class (0: plain diffusion)")] = 0.0,
    init_from: Annotated[Optional[Path], typer.Option(help="Start from another run's checkpoint.pt (its EMA weights)")] = None,
    card: Annotated[bool, typer.Option(help="Write the model card, loss curve and sample grid")] = True,
) -> None:
    """Train a latent diffusion U-Net on TAEF2 latents of your photos."""
    from indexer.files import walk_photos
    from indexer.training.card import write_model_card
    from indexer.training.latents import read_list
    from indexer.training.run import run_training
    from indexer.training.train import TrainConfig

    paths = [p.path for p in walk_photos(photos)] if photos else []
    if photo_list:
        paths += read_list(photo_list, list_root)
    if not paths:
        fail(ValueError("no photos: give folders, files or --list"))
    cfg = TrainConfig(max_minutes=minutes, max_steps=steps, batch_size=batch_size, image_size=image_size, seed=seed, class_weight=class_weight)
    model_dir = run_training(paths, out, cfg, run_dir, resume=resume, init_from=init_from)
    if card:
        write_model_card(model_dir, run_dir, data_note=f"{len(paths)} photos from {photo_list or photos}")
    typer.echo(f"model written to {model_dir}; index with: diffsearch index PHOTOS --model {model_dir}")


@app.command("eval")
def evaluate_command(
    root: Annotated[Path, typer.Option(help="Labelled photos: one folder per class")],
    photo_list: Annotated[Optional[Path], typer.Option("--list", help="Only these photos (lines 'class/file' relative to --root)")] = None,
    fit_list: Annotated[Optional[Path], typer.Option(help="Photos to learn the whitening on (never the evaluated ones)")] = None,
    model: Annotated[str, typer.Option(help="Model folder or 'default'")] = "default",
    config: Annotated[Optional[str], typer.Option(help="Embedding config as JSON (default: the shipped default)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Cache encoded photos here")] = None,
    with_256: Annotated[bool, typer.Option("--with-256", help="Add the TAEF2 latent at 256px, 4x4 pooled (slow)")] = False,
) -> None:
    """Class-level retrieval quality (P@1, P@10, mAP, recall@k) with baselines and the U-Net ablation."""
    import dataclasses

    from indexer.embedding.config import EmbeddingConfig
    from indexer.training.evaluation import BASELINE, LabelledSet, ablation, evaluate, markdown_table
    from indexer.embedding.model import load_model

    labelled = LabelledSet.from_list(photo_list, root) if photo_list else LabelledSet.from_tree(root)
    fit = LabelledSet.from_list(fit_list, root, skip=()).paths if fit_list else None
    chosen = EmbeddingConfig.from_dict(json.loads(config)) if config else EmbeddingConfig()
    if chosen.projection and fit is None:
        typer.echo("no --fit-list: every row is measured without PCA-whitening (it is learned on those photos)")
        chosen = chosen.replace(projection=False)
    results = evaluate(ablation(chosen, load_model(model), with_256), labelled, fit, cache)
    typer.echo(f"{len(labelled.paths)} queries, {len(labelled.classes)} classes, model {model}\n")
    typer.echo(markdown_table(results, baseline=BASELINE))
    if out:
        out.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
