"""Duplicate searches for the HTTP API: run in the background, one at a time, kept until the index changes.

`diffsearch dedup` can take minutes on a large index, longer than an HTTP request should wait. So
a request starts a search and answers at once; the client asks again for its progress and, when it
is done, its groups. A done search is answered again as long as the index holds the same photos:
row ids are never reused and a changed photo gets a new row (indexer.storage.rows), so the number
of vectors and the largest id change whenever a photo is added, changed or removed.

Each search runs in a process of its own, as the CLI's does, not in a thread of the server: run
from a second thread, spatial matching's thousands of small torch ops ran at half speed (libgomp
throttles its threads' spinning once two threads each have a team: find_duplicates on the 2,893
Caltech test photos took 52 s in a thread, 27 s in a main thread; one compute thread, 29 s). The
process also takes its latents' memory with it when it ends, and a stopping server ends it at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from typing import Literal

from indexer.errors import DiffsearchError
from indexer.settings import Settings
from searcher.dedup import find_duplicates
from searcher.filters import normalise_prefix
from searcher.results import DuplicateGroup
from searcher.searcher import Searcher

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.25  # how often a search process reports how far it is
EXIT_GRACE_S = 10.0  # how long a search process that has answered may take to end before it is ended


class DedupBusyError(DiffsearchError):
    """A duplicate search of other photos is still running (one runs at a time)."""


def index_state(searcher: Searcher) -> tuple[int, int]:
    """(number of vectors, largest id): changes whenever a photo is added, changed or removed."""
    return searcher.fresh_vectors().extent()


@dataclass
class DedupJob:
    """One duplicate search: what it looks at, how far it is, and its groups once done."""

    path_prefix: str | None
    index_state: tuple[int, int]
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    state: Literal["running", "done", "failed"] = "running"
    verified: int = 0  # photos whose pairs are verified so far (of `to_verify`)
    to_verify: int = 0
    groups: list[DuplicateGroup] = field(default_factory=list)
    detail: str | None = None  # why it failed
    seconds: float | None = None  # how long it ran, once finished
    _clock: float = field(default_factory=time.perf_counter, repr=False)

    def elapsed(self) -> float:
        return self.seconds if self.seconds is not None else time.perf_counter() - self._clock


def search_process(settings: Settings, path_prefix: str | None, conn: Connection) -> None:
    """A search in a process of its own: ("progress", done, total) while it verifies, then
    ("done", groups) or ("failed", why) on `conn`."""
    try:
        with Searcher(settings.location, settings.runtime_options()) as searcher:
            last = 0.0

            def progress(done: int, total: int) -> None:
                nonlocal last
                if done == total or time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    conn.send(("progress", done, total))

            conn.send(("done", find_duplicates(searcher, None, path_prefix, progress)))
    except DiffsearchError as exc:
        conn.send(("failed", str(exc)))
    except Exception as exc:  # noqa: BLE001 - told to whoever asks, never lost in a process
        log.exception("duplicate search failed")
        conn.send(("failed", f"the search failed ({type(exc).__name__}: {exc})"))


class DedupJobs:
    """The server's duplicate searches: at most one running, the latest kept with its result."""

    def __init__(self, searcher: Searcher, settings: Settings) -> None:
        self.searcher, self.settings = searcher, settings
        self._lock = threading.Lock()
        self._latest: DedupJob | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def latest(self) -> DedupJob | None:
        return self._latest

    def is_current(self, job: DedupJob) -> bool:
        """Whether the index still holds the photos the job looked at."""
        return job.index_state == index_state(self.searcher)

    def start(self, path_prefix: str | None = None) -> DedupJob:
        """The search of the photos under `path_prefix` (None: all): the running one, a finished one
        whose index has not changed since (a failed one is tried again), or a new one started now.
        Raises DedupBusyError while a search of other photos runs."""
        prefix = normalise_prefix(path_prefix)
        state = index_state(self.searcher)
        with self._lock:
            job = self._latest
            if job is not None and job.path_prefix == prefix and (job.state == "running" or (job.state == "done" and job.index_state == state)):
                return job
            if job is not None and job.state == "running":
                where = f"the photos under {job.path_prefix}" if job.path_prefix else "the whole index"
                raise DedupBusyError(f"a duplicate search of {where} is still running; ask again when it is done")
            job = self._latest = DedupJob(prefix, state)
            self._thread = threading.Thread(target=self._run, args=(job,), name="dedup", daemon=True)
            self._thread.start()
        return job

    def close(self, timeout: float = 30.0) -> None:
        """End a running search's process and wait for its thread: the server is stopping."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, job: DedupJob) -> None:
        """Start the job's process and follow it until it answers, ends, or the server stops."""
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of a threaded server
        receive, send = spawn.Pipe(duplex=False)
        process = spawn.Process(target=search_process, args=(self.settings, job.path_prefix, send), name="diffsearch-dedup", daemon=True)
        process.start()
        send.close()
        try:
            while job.state == "running":
                if self._stopping.is_set():
                    self._finish(job, "failed", detail="the server stopped before the search was done")
                elif receive.poll(0.2):
                    self._take(job, receive.recv())
                elif not process.is_alive() and not receive.poll():
                    raise EOFError
        except EOFError:  # the process ended, or its end of the pipe closed, without an answer
            self._finish(job, "failed", detail=f"the search's process ended without an answer (exit code {process.exitcode}); the server's log may say why")
        finally:
            receive.close()
            if not self._stopping.is_set():
                # Let an answered process end on its own: killed while it exits, it leaves its
                # progress bar's semaphore behind, and Python warns of a leak when the server stops.
                process.join(EXIT_GRACE_S)
            if process.is_alive():
                process.terminate()
            process.join(5)

    def _take(self, job: DedupJob, message: tuple) -> None:
        kind, *payload = message
        if kind == "progress":
            job.verified, job.to_verify = payload
        elif kind == "done":
            self._finish(job, "done", groups=payload[0])
        else:
            self._finish(job, "failed", detail=payload[0])

    def _finish(self, job: DedupJob, state: Literal["done", "failed"], groups: list[DuplicateGroup] | None = None, detail: str | None = None) -> None:
        job.groups, job.detail = groups or [], detail
        job.seconds, job.state = job.elapsed(), state
        where = f" under {job.path_prefix}" if job.path_prefix else ""
        if state == "done":
            log.info("duplicate search%s: %d group(s) in %.1f s", where, len(job.groups), job.seconds)
        else:
            log.warning("duplicate search%s failed after %.1f s: %s", where, job.seconds, detail)
