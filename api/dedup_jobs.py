"""Duplicate searches for the HTTP API: run in the background, one at a time, kept until the index changes.

`diffsearch dedup` can take minutes on a large index (spatial verification is ~19 ms a photo on 2
cores), longer than an HTTP request should wait. So a request starts a search in a thread and
answers at once; the client asks again for its progress and, when it is done, its groups. A done
search is answered again as long as the index holds the same photos: row ids are never reused and
a changed photo gets a new row (indexer.storage.rows), so the number of vectors and the largest id
change whenever a photo is added, changed or removed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import numpy as np

from indexer.errors import DiffsearchError
from searcher.dedup import find_duplicates
from searcher.results import DuplicateGroup
from searcher.searcher import Searcher, normalise_prefix

log = logging.getLogger(__name__)

Finder = Callable[..., list[DuplicateGroup]]  # find_duplicates' signature: (searcher, rule, path_prefix, progress)


class DedupBusyError(DiffsearchError):
    """A duplicate search of other photos is still running (one runs at a time)."""


class _Stopped(Exception):
    """Raised inside a running search when the server stops."""


def index_state(searcher: Searcher) -> tuple[int, int]:
    """(number of vectors, largest id): changes whenever a photo is added, changed or removed."""
    ids = np.asarray(searcher.fresh_vectors().ids(), dtype=np.int64)
    return len(ids), int(ids.max()) if len(ids) else 0


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


class DedupJobs:
    """The server's duplicate searches: at most one running, the latest kept with its result."""

    def __init__(self, searcher: Searcher, find: Finder = find_duplicates) -> None:
        self.searcher, self.find = searcher, find
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
        """Stop a running search at its next verified photo and wait for it: the server is stopping,
        and a thread still in torch when the interpreter exits aborts the process."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, job: DedupJob) -> None:
        def progress(done: int, total: int) -> None:
            if self._stopping.is_set():
                raise _Stopped
            job.verified, job.to_verify = done, total

        try:
            groups = self.find(self.searcher, None, job.path_prefix, progress)
        except _Stopped:
            job.detail = "the server stopped before the search was done"
            job.seconds, job.state = job.elapsed(), "failed"
            return
        except Exception as exc:  # noqa: BLE001 - a failed search is reported to whoever asks, never lost in a thread
            log.exception("duplicate search failed")
            job.detail = str(exc) if isinstance(exc, DiffsearchError) else f"the search failed ({type(exc).__name__}); the server's log has the details"
            job.seconds, job.state = job.elapsed(), "failed"
            return
        job.groups = groups
        job.seconds, job.state = job.elapsed(), "done"
        log.info("duplicate search%s: %d group(s) in %.1f s", f" under {job.path_prefix}" if job.path_prefix else "", len(groups), job.seconds)
