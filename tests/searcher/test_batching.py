"""Micro-batching: concurrent queries share forward passes, give the same vectors, and back off when full."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from searcher.batching import EmbeddingQueue, QueueFullError


def test_batched_vectors_equal_embedding_each_alone(embedder, sample_photos):
    photos = sample_photos[:12]
    alone = np.stack([embedder.embed([p])[0] for p in photos])
    queue = EmbeddingQueue(embedder, max_batch=8, wait_ms=50)
    try:
        queue.expect(len(photos))  # as Searcher.embed announces queries before decoding them
        with ThreadPoolExecutor(12) as pool:
            batched = list(pool.map(lambda p: queue.embed([embedder.prepare(p)], expected=True)[0], photos))
    finally:
        queue.close()
    np.testing.assert_allclose(np.stack(batched), alone, atol=1e-5)
    assert queue.stats.images == 12 and queue.stats.batches < 12  # they really shared passes


def test_a_full_queue_refuses_at_once_and_recovers(embedder, sample_photos, monkeypatch):
    gate = threading.Event()
    real = embedder.embed_frames
    monkeypatch.setattr(embedder, "embed_frames", lambda frames: (gate.wait(30), real(frames))[1])
    queue = EmbeddingQueue(embedder, max_batch=2, wait_ms=1, max_queue=3)
    pixels = embedder.prepare(sample_photos[0])
    try:
        waiting = [queue.submit(pixels) for _ in range(3)]
        with pytest.raises(QueueFullError, match="limit 3"):
            queue.submit(pixels)
        assert queue.stats.rejected == 1 and queue.length == 3
        gate.set()
        results = [f.result(30)[0] for f in waiting]  # (vector, latent) each
        assert all(np.allclose(r, results[0], atol=1e-5) for r in results)
        vector, latent = queue.submit(pixels).result(30)
        assert vector.shape == (embedder.dim,) and latent.shape == (32, *(side // 8 for side in pixels.shape[1:]))
    finally:
        gate.set()
        queue.close()


def test_a_lone_query_does_not_wait_for_a_batch_to_fill(embedder, sample_photos):
    queue = EmbeddingQueue(embedder, max_batch=8, wait_ms=60_000)  # a wait that would never end the test
    try:
        vector, _ = queue.submit(embedder.prepare(sample_photos[0])).result(timeout=20)
        assert vector.shape == (embedder.dim,) and queue.stats.batches == 1
        queue.expect(1)  # one more is decoding: now the worker holds the batch open for it
        first = queue.submit(embedder.prepare(sample_photos[1]))
        second = queue.submit(embedder.prepare(sample_photos[2]), expected=True)
        first.result(timeout=20), second.result(timeout=20)
        assert queue.stats.batches == 2 and queue.stats.images == 3
    finally:
        queue.close()


def test_concurrent_searches_share_one_call_and_match_searching_alone(searcher):
    from searcher.search_batching import SearchBatcher

    store = searcher.fresh_vectors()
    vectors = np.stack([store.reconstruct(int(i)) for i in store.ids()[:24]])
    alone = [store.search(v[None], 5) for v in vectors]
    gate = threading.Event()
    calls = []

    class Slow:  # holds the first call back so the other 23 queue up behind it
        def __getattr__(self, name):
            return getattr(store, name)

        def search(self, queries, k, path_prefix=None):
            calls.append(len(queries))
            gate.wait(10)
            return store.search(queries, k)

    batcher = SearchBatcher(lambda: Slow(), max_batch=64)
    try:
        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(batcher.search, v, 5) for v in vectors]
            while not calls or batcher._queue.qsize() < 24 - calls[0]:  # the worker holds its first batch
                threading.Event().wait(0.01)
            gate.set()
            batched = [f.result(30) for f in futures]
    finally:
        gate.set()
        batcher.close()
    assert len(calls) == 2 and sum(calls) == 24 and batcher.queries == 24  # two calls served 24 queries
    for (d_alone, i_alone), (d_batched, i_batched) in zip(alone, batched):
        assert i_batched.tolist() == i_alone.tolist()
        np.testing.assert_allclose(d_batched, d_alone, atol=1e-5)
