"""`diffsearch index`: bring an index up to date with photo folders, incrementally and crash-safely.

A run is planned first (mark and sweep, as rclip does): a file whose size and mtime match its row
is unchanged; one whose bytes match is touched; one whose bytes changed is replaced (new row id);
a new path whose bytes match a photo that vanished is a move (the row keeps its vector); what is
left is new, and rows whose file is gone are pruned, but only where the walk really looked: a
missing root or an unreadable folder is reported and recorded, and every photo under it is kept
(an unplugged drive must not empty the index). Then the new photos are decoded in worker
processes while the model embeds batches, with a checkpoint every N photos or S seconds.
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from indexer.embedding.config import EmbeddingConfig
from indexer.embedding.embedder import Embedder
from indexer.engine import Decoded, EmbedEngine, Embedded, decode_file
from indexer.files import DEFAULT_EXCLUDES, PhotoFile, Scan, content_hash, scan_photos
from indexer.workers import forked_cleanly
from indexer.storage import IndexSettings, PhotoIndex
from indexer.settings import Settings
from indexer.storage.rows import Failure, Photo, PhotoLatent, delete_failures, delete_photos, latent_row, photos_under, utcnow

log = logging.getLogger(__name__)


@dataclass
class IndexSummary:
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0  # known-bad files, unchanged since they last failed
    failed: int = 0
    kept: int = 0  # photos under a missing root or unreadable folder: not pruned
    missing_roots: list[str] = field(default_factory=list)
    unreadable_folders: list[str] = field(default_factory=list)
    symlinks_skipped: int = 0
    excluded: list[str] = field(default_factory=list)  # folders and photo files an exclude pattern left out
    seconds: float = 0.0
    embedded_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return (self.added + self.updated) / self.embedded_seconds if self.embedded_seconds else 0.0


@dataclass
class Plan:
    to_embed: list[PhotoFile] = field(default_factory=list)
    touched: list[tuple[int, PhotoFile]] = field(default_factory=list)
    moved: list[tuple[int, PhotoFile]] = field(default_factory=list)
    stale_ids: list[int] = field(default_factory=list)  # rows of changed files: replaced by new rows
    replaced: set[str] = field(default_factory=set)  # paths of those changed files
    deleted_ids: list[int] = field(default_factory=list)
    kept: int = 0  # vanished rows under a root or folder the walk could not read
    stale_failures: list[str] = field(default_factory=list)  # failure rows of files that are gone
    unchanged: int = 0
    skipped: int = 0
    failures: list[tuple[PhotoFile, str]] = field(default_factory=list)


def plan_run(session: Session, roots: Sequence[Path], scan: Scan, prune: bool) -> Plan:
    plan = Plan()
    rows = photos_under(session, list(roots))
    failed = {f.path: f for f in session.scalars(select(Failure))}
    candidates: list[PhotoFile] = []
    for file, reason in scan.rejected:
        old = failed.get(str(file.path))
        if old is not None and (old.size, old.mtime, old.reason) == (file.size, file.mtime, reason):
            plan.skipped += 1
        else:
            plan.failures.append((file, reason))
    plan.failures += [(PhotoFile(folder, 0, 0.0), reason) for folder, reason in scan.unreadable]
    for file in scan.files:
        row = rows.pop(str(file.path), None)
        if row is None:
            old = failed.get(str(file.path))
            if old is not None and old.size == file.size and old.mtime == file.mtime:
                plan.skipped += 1
            else:
                candidates.append(file)
        elif row.size == file.size and row.mtime == file.mtime:
            plan.unchanged += 1
        else:
            digest = _hash_or_none(file, plan)
            if digest is None:
                continue  # unreadable now: keep its row and vector, the failure is recorded
            if digest == row.content_hash:
                plan.touched.append((row.id, file))
            else:
                plan.stale_ids.append(row.id)
                plan.replaced.add(str(file.path))
                plan.to_embed.append(file)
    vanished = _by_size_and_hash(rows.values())
    for file in candidates:
        match = vanished.get(file.size)
        digest = _hash_or_none(file, plan) if match else None
        if match and digest is None:
            continue  # unreadable: recorded as a failure, not embedded
        if digest and digest in match:
            plan.moved.append((match.pop(digest).id, file))
        else:
            plan.to_embed.append(file)
    remaining = [row for group in vanished.values() for row in group.values()]
    prunable = [row.id for row in remaining if scan.was_read(row.path)]
    plan.kept = len(remaining) - len(prunable)
    if prune:
        plan.deleted_ids = prunable
    seen = scan.seen | {str(folder) for folder, _ in scan.unreadable}
    plan.stale_failures = [path for path in failed if path not in seen and scan.was_read(path)]
    return plan


def _by_size_and_hash(rows: Iterable[Photo]) -> dict[int, dict[str, Photo]]:
    """Rows whose file vanished, by size then content hash: where a moved photo is looked up."""
    out: dict[int, dict[str, Photo]] = defaultdict(dict)
    for row in rows:
        out[row.size][row.content_hash] = row
    return out


def _hash_or_none(file: PhotoFile, plan: Plan) -> str | None:
    try:
        return content_hash(file.path)
    except OSError as exc:
        plan.failures.append((file, f"cannot read: {exc.strerror or exc}"))
        return None


class _Decoded(Dataset):
    """Worker-side work: read, hash, decode, EXIF-transpose and crop one photo."""

    def __init__(self, files: Sequence[PhotoFile], config: EmbeddingConfig) -> None:
        self.files, self.config = list(files), config

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Decoded, float]:
        started = time.perf_counter()
        decoded = decode_file(self.files[i].path, self.config)
        return i, decoded, time.perf_counter() - started


def _init_worker(close_fds: tuple[int, ...], _worker_id: int) -> None:
    """A decode worker: one thread (the main process owns the cores' compute), no copy of the writer's lock."""
    torch.set_num_threads(1)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _collate(items: list) -> list:  # noqa: ANN001 - DataLoader's collate signature
    return items


class IndexRun:
    """One `index` run over an open, locked index."""

    def __init__(
        self,
        index: PhotoIndex,
        embedder: Embedder,
        checkpoint_every: int = 256,
        checkpoint_seconds: float = 60.0,
        lock: object | None = None,
        engine: EmbedEngine | None = None,
    ) -> None:
        """`engine`: turns files into Embedded batches (default: this machine; see ray_engine.py)."""
        self.index, self.embedder = index, embedder
        self.embed_files: EmbedEngine = engine or self._local
        self.checkpoint_every, self.checkpoint_seconds = checkpoint_every, checkpoint_seconds
        self.worker_closes = tuple(fd for fd in [getattr(lock, "fileno", None)] if fd is not None)

    def run(
        self, roots: Sequence[Path], prune: bool = True, follow_symlinks: bool = False, exclude: Sequence[str] = DEFAULT_EXCLUDES
    ) -> IndexSummary:
        started = time.perf_counter()
        summary = IndexSummary()
        stages_before = dict(self.embedder.stage_seconds)  # the embedder may have run before
        self.index.reconcile()
        roots = [Path(r).expanduser().absolute() for r in roots]
        log.info("scanning %s", ", ".join(map(str, roots)))
        scan = scan_photos(roots, follow_symlinks, exclude)
        summary.excluded = [str(p) for p in scan.excluded]
        summary.missing_roots = [str(r) for r in scan.missing_roots]
        summary.unreadable_folders = [str(f) for f, _ in scan.unreadable if f not in scan.missing_roots]
        summary.symlinks_skipped = scan.symlinks_skipped
        with Session(self.index.engine) as session:
            plan = plan_run(session, roots, scan, prune)
        self.index.remember_roots(scan.listed_roots, follow_symlinks)
        self._apply_plan(plan, summary)
        embed_started = time.perf_counter()
        self._embed(plan.to_embed, plan.replaced, summary)
        summary.embedded_seconds = time.perf_counter() - embed_started
        summary.seconds = time.perf_counter() - started
        summary.stage_seconds = {
            stage: seconds - stages_before.get(stage, 0.0) for stage, seconds in self.embedder.stage_seconds.items()
        }
        return summary

    def _apply_plan(self, plan: Plan, summary: IndexSummary) -> None:
        """Touches, moves and deletions: no model needed. SQLite first, then FAISS (see index.py)."""
        gone = plan.stale_ids + plan.deleted_ids
        with Session(self.index.engine) as session, session.begin():
            for row_id, file in plan.touched + plan.moved:
                row = session.get(Photo, row_id)
                assert row is not None
                row.path, row.size, row.mtime = str(file.path), file.size, file.mtime
            delete_photos(session, gone)
            delete_failures(session, plan.stale_failures)
            for file, reason in plan.failures:
                self._record_failure(session, file, reason, summary)
        self.index.remove_vectors(gone)
        summary.unchanged, summary.skipped = plan.unchanged + len(plan.touched), plan.skipped
        summary.moved, summary.removed, summary.kept = len(plan.moved), len(plan.deleted_ids), plan.kept

    def reembed(self, files: list[PhotoFile]) -> IndexSummary:
        """Embed `files` as new rows (used by repair for rows that lost their vectors)."""
        summary = IndexSummary()
        self._embed(files, set(), summary)
        return summary

    def _record_failure(self, session: Session, file: PhotoFile, reason: str, summary: IndexSummary) -> None:
        log.warning("skipped %s: %s", file.path, reason)
        session.merge(Failure(path=str(file.path), reason=reason, size=file.size, mtime=file.mtime, failed_at=utcnow()))
        summary.failed += 1
        summary.failures.append((str(file.path), reason))

    def _embed(self, files: list[PhotoFile], replaced: set[str], summary: IndexSummary) -> None:
        if not files:
            return
        since, last_save = 0, time.monotonic()
        session = Session(self.index.engine)
        bar = tqdm(total=len(files), desc="indexing", unit=" img")
        try:
            for batch in self.embed_files(files):
                since += self._store_batch(session, files, batch, replaced, summary)
                bar.update(len(batch))
                if since >= self.checkpoint_every or time.monotonic() - last_save >= self.checkpoint_seconds:
                    self._checkpoint(session)
                    since, last_save = 0, time.monotonic()
        finally:
            # Ctrl-C or an error keeps every finished batch: commit rows, then save vectors.
            self._checkpoint(session)
            session.close()
            bar.close()

    def _local(self, files: list[PhotoFile]) -> Iterator[list[Embedded]]:
        """The local engine: decode in worker processes, embed batches in this one."""
        options = self.embedder.options
        loader = DataLoader(
            _Decoded(files, self.embedder.config),
            batch_size=options.batch_size,
            num_workers=options.workers,
            collate_fn=_collate,
            prefetch_factor=4 if options.workers else None,
            worker_init_fn=partial(_init_worker, self.worker_closes),
        )
        for batch in forked_cleanly(loader):
            self.embedder.stage_seconds["decode (workers)"] += sum(seconds for _, _, seconds in batch)
            good = [(i, d) for i, d, _ in batch if d.failure is None]
            done = self.embedder.embed_frames([d.pixels for _, d in good])
            out = [Embedded(i, None, None, "", d.failure) for i, d, _ in batch if d.failure is not None]
            out += [
                Embedded(i, vector, d.info, d.digest, latent=latent)
                for (i, d), vector, latent in zip(good, done.vectors, done.latents, strict=True)
            ]
            yield out

    def _store_batch(
        self, session: Session, files: list[PhotoFile], batch: list[Embedded], replaced: set[str], summary: IndexSummary
    ) -> int:
        """One batch of results into rows (flushed, so they get ids) and vectors under those ids."""
        for item in batch:
            if item.failure is not None:
                self._record_failure(session, files[item.i], item.failure, summary)
        good = [item for item in batch if item.failure is None]
        if not good:
            return 0
        rows: list[Photo] = []
        latents: list[PhotoLatent] = []
        try:  # all of the batch or none of it: an interrupt (Ctrl-C, SIGTERM) may land anywhere in here
            for item in good:
                file, info = files[item.i], item.info
                assert info is not None
                row = Photo(
                    path=str(file.path), content_hash=item.digest, size=file.size, mtime=file.mtime, width=info.width,
                    height=info.height, format=info.format, taken_at=info.taken_at, indexed_at=utcnow(),
                )  # fmt: skip
                session.add(row)
                rows.append(row)
            delete_failures(session, [str(files[item.i].path) for item in good])  # they failed before, not now
            session.flush()  # assigns the ids that become the vector ids
            latents += [latent_row(row.id, item.latent) for row, item in zip(rows, good) if item.latent is not None]
            session.add_all(latents)
            vectors = np.stack([item.vector for item in good]).astype(np.float32)
            self.index.add_vectors(session, np.array([r.id for r in rows], dtype=np.int64), vectors)
        except BaseException:
            self._undo_batch(session, rows, latents)
            raise
        updated = sum(row.path in replaced for row in rows)
        summary.updated += updated
        summary.added += len(rows) - updated
        return len(rows)

    def _undo_batch(self, session: Session, rows: list[Photo], latents: list[PhotoLatent]) -> None:
        """Take back a half-stored batch, so the checkpoint that follows commits no row without its vector."""
        ids = [row.id for row in rows if row.id is not None]
        for row in [*rows, *latents]:
            if row in session.new:
                session.expunge(row)
            elif row in session:
                session.delete(row)
        session.flush()
        self.index.drop_unsaved_vectors(ids)  # the ones add_vectors may have stored before the interrupt
        log.warning("interrupted while storing a batch: its %d photo(s) were taken back and will be indexed next run", len(rows))

    def _checkpoint(self, session: Session) -> None:
        session.commit()
        self.index.save_vectors()



def embedder_for(settings: Settings, stored: EmbeddingConfig | None, embedder: Embedder | None = None) -> Embedder:
    """An Embedder for the settings (the index's stored config first), reusing `embedder`'s model when it fits."""
    config = settings.embedding_config(stored)
    if embedder is not None and embedder.config == config:
        return embedder
    reuse = embedder.model if embedder and embedder.config.model == config.model else None
    return Embedder(config, settings.runtime_options(), model=reuse)


def index_photos(
    roots: Sequence[Path],
    settings: Settings,
    prune: bool = True,
    embedder: Embedder | None = None,
) -> IndexSummary:
    """Bring the index at settings.location up to date with `roots` (creating it if needed)."""
    location = settings.location
    with PhotoIndex.write_lock(location) as lock:
        stored = PhotoIndex.stored_settings(location)
        embedder = embedder_for(settings, stored.embedding if stored else None, embedder)
        index_type = settings.index_type or (stored.index_type if stored else "Flat")
        wanted = IndexSettings(
            embedder.config, embedder.fingerprint, embedder.model.fingerprint, embedder.dim, index_type, embedder.legacy_fingerprints
        )
        index = PhotoIndex.open_for_writing(location, wanted)
        try:
            engine = None
            if settings.engine == "ray":
                from indexer.ray_engine import RayEngine

                # Shards go under the index folder (with --database: the local --index folder).
                engine = RayEngine(embedder, Path(settings.index_dir), settings.ray_address, settings.batch_size)
            run = IndexRun(index, embedder, settings.checkpoint_every, lock=lock, engine=engine)
            return run.run(roots, prune, settings.follow_symlinks, settings.exclude_patterns)
        finally:
            index.close()

