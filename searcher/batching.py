"""Micro-batching: concurrent queries share one forward pass instead of fighting over the cores.

Request threads decode their photos in parallel (decoding is cheap and single-threaded) and hand
the pixels to one embedding worker thread, which takes whatever is queued (up to the batch size,
waiting at most `wait_ms` for more to arrive), embeds it as one batch, and hands each vector back.
The worker waits only while more queries are on their way (announced with `expect` before
they decode): a lone query is embedded at once, a burst fills one batch. A vector does not
depend on the batch it was computed in (the Embedder's contract, tested to
1e-5), so batching changes throughput, never results. A queue longer than `max_queue` is refused
at once (`QueueFullError`, HTTP 503 + Retry-After) rather than letting latency grow without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from indexer.embedding.embedder import Embedder, FrameEmbeddings
from indexer.errors import DiffsearchError

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def take_batch(source: queue.Queue, max_batch: int, wait: Callable[[], float]) -> list | None:
    """Block for one item, then add more up to `max_batch`: what is queued, and for as long as
    `wait()` says (seconds; < 0 stops, 0 takes only what is there). None: the queue was closed."""
    first = source.get()
    if first is None:
        return None
    batch = [first]
    while len(batch) < max_batch:
        timeout = wait()
        if timeout < 0 and source.empty():
            break
        try:
            item = source.get(timeout=timeout) if timeout > 0 else source.get_nowait()
        except queue.Empty:
            break
        if item is None:
            source.put(None)  # stop after this batch
            break
        batch.append(item)
    return batch


class QueueFullError(DiffsearchError):
    """More queries are waiting to be embedded than the server accepts (try again shortly)."""


@dataclass
class BatchStats:
    """Counters for /metrics: batches by size, images embedded, time spent."""

    batches: int = 0
    images: int = 0
    seconds: float = 0.0
    rejected: int = 0
    by_size: dict[int, int] = field(default_factory=lambda: {b: 0 for b in BATCH_BUCKETS})

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.images += size
        self.seconds += seconds
        for bucket in BATCH_BUCKETS:
            if size <= bucket:
                self.by_size[bucket] += 1


class EmbeddingQueue:
    """One worker thread that embeds queued pixel tensors in batches."""

    def __init__(
        self, embedder: Embedder, max_batch: int = 32, wait_ms: float = 5.0, max_queue: int = 64, lock: threading.Lock | None = None
    ) -> None:
        """`lock`: held around each batch, so other users of the model (a searcher encoding
        re-ranking templates) take turns with the worker instead of calling it concurrently."""
        self.embedder = embedder
        self.model_lock = lock or threading.Lock()
        self.max_batch, self.wait = max_batch, wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: queue.Queue[tuple[torch.Tensor, Future] | None] = queue.Queue()
        self._pending = 0
        self._arriving = 0  # queries announced by `expect`, still decoding
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="diffsearch-embed", daemon=True)
        self._worker.start()

    @property
    def length(self) -> int:
        """Images waiting or being embedded."""
        return self._pending

    def expect(self, n: int) -> None:
        """n queries are decoding and will be submitted (or withdrawn with expect(-n)): worth waiting for."""
        with self._lock:
            self._arriving = max(0, self._arriving + n)

    def submit(self, pixels: torch.Tensor, expected: bool = False) -> Future:
        """Queue one prepared image (`Embedder.prepare`); the future gives its (d,) vector and its latent."""
        with self._lock:
            if expected:
                self._arriving = max(0, self._arriving - 1)
            if self._pending >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFullError(f"{self._pending} queries are already waiting (limit {self.max_queue}); retry shortly")
            self._pending += 1
        future: Future = Future()
        self._queue.put((pixels, future))
        return future

    def embed(self, pixels: list[torch.Tensor], expected: bool = False) -> npt.NDArray[np.float32]:
        """Embed these images through the shared queue (blocks until their batch is done)."""
        return self.embed_frames(pixels, expected).vectors

    def embed_frames(self, pixels: list[torch.Tensor], expected: bool = False) -> FrameEmbeddings:
        """Their vectors and latents, through the shared queue (blocks until their batch is done)."""
        futures = [self.submit(p, expected) for p in pixels]
        done = [f.result() for f in futures]
        vectors = np.stack([vector for vector, _ in done]) if done else np.zeros((0, self.embedder.dim), np.float32)
        return FrameEmbeddings(vectors, [latent for _, latent in done])

    def _more_wait(self, deadline: float) -> float:
        """Seconds to wait for the next image: none when nobody else is on the way."""
        if self._arriving == 0 and self._queue.empty():
            return -1.0
        return deadline - time.monotonic()

    def _take_batch(self) -> list[tuple[torch.Tensor, Future]] | None:
        deadline = time.monotonic() + self.wait
        return take_batch(self._queue, self.max_batch, lambda: self._more_wait(deadline))

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            started = time.perf_counter()
            try:
                with self.model_lock:
                    done = self.embedder.embed_frames([pixels for pixels, _ in batch])
                for (_, future), vector, latent in zip(batch, done.vectors, done.latents, strict=True):
                    future.set_result((vector, latent))
            except BaseException as exc:  # every waiter hears of the failure; the worker lives on
                log.exception("embedding a batch of %d failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._pending -= len(batch)
                self.stats.record(len(batch), time.perf_counter() - started)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)
