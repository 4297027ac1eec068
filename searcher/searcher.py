"""`Searcher`: embed a query exactly as the index was built, return its nearest Euclidean neighbours."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.embedding.config import RuntimeOptions
from indexer.embedding.embedder import Embedder, FrameEmbeddings, Latent
from indexer.errors import ConfigError, IndexCorruptError, IndexMismatchError
from indexer.images import ImageInput, load_image
from indexer.settings import Settings
from indexer.storage import PhotoIndex, VectorIndex
from indexer.embedding.model import DiffusionModel
from indexer.storage.rows import Photo, read_latents
from searcher.batching import EmbeddingQueue
from searcher.expansion import EXPAND, expand as expand_results
from searcher.filters import normalise_prefix
from searcher.search_batching import SearchBatcher
from searcher.rerank import RERANK, can_rerank, with_mirrors
from searcher.rerank import rerank as rerank_results
from searcher.results import SearchResult

log = logging.getLogger(__name__)

MAX_K = 1000
# A photo the query's mirror finds counts only this near (Euclidean, unit vectors): mirrored copies
# land well inside it (a mirrored Caltech photo: 0.0-0.1 from its original's mirror), while further
# out the mirror mostly adds photos of other classes: searching with the mirror at any distance
# cost Caltech's class retrieval P@10 0.630 -> 0.619; within 0.6, 0.6303 (Tiny ImageNet unseen
# classes unchanged, 0.2725).
MIRROR_MAX_DISTANCE = 0.6


class Searcher:
    """Read-only access to an index; safe to share between threads; sees a running indexer's checkpoints."""

    def __init__(
        self,
        location: str | os.PathLike,
        options: RuntimeOptions | None = None,
        model: DiffusionModel | None = None,
        mirror: bool = True,
        rerank: int = RERANK,
        expand: int = EXPAND,
    ) -> None:
        """`location`: an index folder, or the postgresql:// URL of a Postgres index. `mirror`: whether
        a query image also searches as its left-right mirror by default (see `query`). `rerank`: how
        many of a query image's nearest photos are re-ranked by spatial match (0: none). `expand`:
        how many re-ranked first results expand the query for the rest of them (0: none)."""
        self.mirror, self.rerank, self.expand = mirror, _checked_count("rerank", rerank), _checked_count("expand", expand)
        self.index = PhotoIndex.open(location)
        settings = self.index.settings
        self.embedder = Embedder(settings.embedding, options or RuntimeOptions(workers=0), model=model)
        if not self.embedder.matches(settings.fingerprint):
            raise IndexMismatchError(
                f"{self.index.location} was built with embedder {settings.fingerprint} (model {settings.embedding.model!r}, "
                f"weights {settings.model_fingerprint}), but that model now loads as {self.embedder.fingerprint} "
                f"(weights {self.embedder.model.fingerprint}): the model changed on disk; re-index into a new folder"
            )
        self._model_lock = threading.Lock()
        self.queue: EmbeddingQueue | None = None
        self.search_batcher: SearchBatcher | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Searcher:
        """The searcher `settings` describe: where the index is, how to run the model, and the query
        defaults (mirror, re-ranking depth, expansion) that calls may override."""
        return cls(settings.location, settings.runtime_options(), mirror=settings.mirror_queries, rerank=settings.rerank, expand=settings.expand)

    def start_batching(self, max_batch: int = 32, wait_ms: float = 5.0, max_queue: int = 64) -> EmbeddingQueue:
        """From now on, concurrent `query` calls from several threads share batched forward passes."""
        if self.queue is None:
            self.queue = EmbeddingQueue(self.embedder, max_batch, wait_ms, max_queue, lock=self._model_lock)
        if self.search_batcher is None and not self.fresh_vectors().filters_natively:
            self.search_batcher = SearchBatcher(self.fresh_vectors, max_batch=2 * max_batch)
        return self.queue

    def fresh_vectors(self) -> VectorIndex:
        """The vectors as the indexer last saved them."""
        return self.index.fresh_vectors()

    def __len__(self) -> int:
        return len(self.fresh_vectors())

    def counts(self) -> dict[str, int]:
        """Rows, vectors and failures, with the vectors as the indexer last saved them."""
        self.fresh_vectors()
        return self.index.counts()

    def _check_vectors_present(self) -> None:
        """Rows but no vectors is damage, not an empty index: say so instead of finding nothing."""
        problem = self.index.missing_vectors_problem()
        if problem:
            raise IndexCorruptError(problem)

    def embed(self, images: Sequence[ImageInput], mirrored: bool = False) -> npt.NDArray[np.float32]:
        """Decode here (in the caller's thread, in parallel with other callers), then embed: through
        the shared batching queue when it runs, else one model call at a time (concurrent torch
        calls on a few cores only thrash each other). `mirrored`: each image's row is followed by
        its left-right mirror's."""
        return self._embed_frames(images, mirrored)[0].vectors

    def _embed_frames(self, images: Sequence[ImageInput], mirrored: bool) -> tuple[FrameEmbeddings, list[Image.Image]]:
        """`embed`'s vectors with the frames' latents, and the decoded images (for re-ranking's templates)."""
        copies = 2 if mirrored else 1
        if self.queue is None:
            decoded, pixels = self._prepare(images, mirrored)
            with self._model_lock:
                return self.embedder.embed_frames(pixels), decoded
        queue = self.queue
        queue.expect(copies * len(images))  # the embedding worker waits for these while they decode
        try:
            decoded, pixels = self._prepare(images, mirrored)
        except BaseException:
            queue.expect(-copies * len(images))
            raise
        return queue.embed_frames(pixels, expected=True), decoded

    def _prepare(self, images: Sequence[ImageInput], mirrored: bool) -> tuple[list[Image.Image], list[torch.Tensor]]:
        """Each image decoded once, and cropped as the embedder crops it (and its mirror)."""
        decoded = [load_image(image, *self.embedder.config.decode_options)[0] for image in images]
        if not mirrored:
            return decoded, [self.embedder.prepare(image) for image in decoded]
        return decoded, [p for image in decoded for p in self.embedder.prepare_with_mirror(image)]

    def query(
        self,
        image: ImageInput,
        k: int = 10,
        max_distance: float | None = None,
        path_prefix: str | None = None,
        mirror: bool | None = None,
        rerank: int | None = None,
        expand: int | None = None,
    ) -> list[SearchResult]:
        """The k nearest indexed photos to `image` (a path, bytes, file object, PIL image or array).

        With `mirror` (default: the searcher's setting, on unless turned off) the image's left-right
        mirror searches too, and a photo it finds within MIRROR_MAX_DISTANCE comes at the nearer of
        its two distances: a mirrored copy is found as readily as an exact one, for a second
        embedding per query (bench/near_duplicates.py).

        Then the `rerank` nearest (default: the searcher's setting, RERANK) are re-ordered by how
        well the query matches somewhere in each (searcher.rerank), so a cropped or re-framed copy
        comes first; those results carry their `match` score, and their distances are kept as they
        are (so the first `rerank` need not be in distance order). Indexes without kept latents
        are not re-ranked.

        Then, with `expand` (default: the searcher's setting, EXPAND), the first re-ranked result
        stays first and the rest of the re-ranked ones are ordered by the query expanded with the
        first `expand` of them (searcher.expansion): photos like the best match come next."""
        return self.query_batch([image], k, max_distance, path_prefix, mirror, rerank, expand)[0]

    def query_batch(
        self,
        images: Sequence[ImageInput],
        k: int = 10,
        max_distance: float | None = None,
        path_prefix: str | None = None,
        mirror: bool | None = None,
        rerank: int | None = None,
        expand: int | None = None,
    ) -> list[list[SearchResult]]:
        mirror = self.mirror if mirror is None else mirror
        rerank = _checked_count("rerank", self.rerank if rerank is None else rerank)
        expand = _checked_count("expand", self.expand if expand is None else expand)
        rerank = rerank if self.embedder.keeps_latents else 0  # a pixel-space model keeps no latents
        fetch = min(MAX_K, max(_checked_k(k), rerank))
        embedded, decoded = self._embed_frames(images, mirrored=mirror)
        found = self.query_vectors(embedded.vectors, fetch, max_distance, path_prefix)
        own = slice(None, None, 2 if mirror else 1)  # the query's own rows, not its mirror's
        if mirror:
            found = [_nearer_of(found[i], found[i + 1], fetch) for i in range(0, len(found), 2)]
        if rerank:
            jobs = zip(decoded, embedded.latents[own], found, strict=True)
            found = [self._rerank(*job, rerank) for job in jobs]
        if rerank and expand:
            found = [self._expand(query, results, expand) for query, results in zip(embedded.vectors[own], found, strict=True)]
        return [results[:k] for results in found]

    def _expand(self, query: npt.NDArray[np.float32], results: list[SearchResult], n: int) -> list[SearchResult]:
        vectors = self.fresh_vectors().reconstruct_many([r.id for r in results if r.match is not None])
        return expand_results(results, query, vectors, n)

    def _rerank(self, image: Image.Image, frame_latent: Latent | None, results: list[SearchResult], n: int) -> list[SearchResult]:
        ids = [r.id for r in results[:n]]
        with Session(self.index.engine) as session:
            latents = read_latents(session, ids)
        if frame_latent is None or not can_rerank(ids, latents):
            return results  # nothing to re-order, or an index from before latents were kept: no templates to encode
        return rerank_results(results, with_mirrors(self.templates(image, frame_latent)), latents, n)

    def templates(self, image: ImageInput, frame_latent: Latent) -> list[torch.Tensor]:
        """A photo's re-ranking templates, unmirrored (searcher.rerank): the centre of its frame
        latent, and its centre square at the smaller zooms, decoded here and encoded under the model
        lock. Raises InvalidImageError for an image that cannot be read."""
        pixels = self.embedder.template_pixels(image)
        with self._model_lock:
            smaller = self.embedder.encode_each(pixels)
        return [self.embedder.query_template(frame_latent), *smaller]

    def query_id(
        self, photo_id: int, k: int = 10, max_distance: float | None = None, path_prefix: str | None = None
    ) -> list[SearchResult]:
        """More like an indexed photo (its own stored vector; the photo itself comes first)."""
        vector = self.fresh_vectors().reconstruct(photo_id)
        if vector is None:
            raise KeyError(photo_id)
        return self.query_vectors(vector[None], k, max_distance, path_prefix)[0]

    def query_vectors(
        self,
        vectors: npt.NDArray[np.float32],
        k: int = 10,
        max_distance: float | None = None,
        path_prefix: str | None = None,
    ) -> list[list[SearchResult]]:
        _checked_k(k)
        if max_distance is not None and max_distance < 0:
            raise ConfigError(f"max_distance must be >= 0, got {max_distance}")
        store = self.fresh_vectors()
        self._check_vectors_present()
        prefix = normalise_prefix(path_prefix)
        out = []
        for vector in vectors:
            if store.filters_natively:  # the store applies the prefix inside its search
                d2, ids = store.search(vector[None], k, path_prefix=prefix)
                out.append(self._results(d2[0], ids[0], max_distance, prefix)[:k])
                continue
            fetch = k if prefix is None else min(len(store), 4 * k)
            while True:
                if self.search_batcher is not None and prefix is None:
                    d2, ids = self.search_batcher.search(vector, max(fetch, 1))  # shared with concurrent queries
                else:
                    d2, ids = store.search(vector[None], max(fetch, 1))
                results = self._results(d2[0], ids[0], max_distance, prefix)
                exhausted = fetch >= len(store) or (max_distance is not None and d2[0][-1] > max_distance**2)
                if prefix is None or len(results) >= k or exhausted:
                    break
                fetch = min(len(store), fetch * 4)
            out.append(results[:k])
        return out

    def _results(
        self, d2: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], max_distance: float | None, prefix: str | None
    ) -> list[SearchResult]:
        found = [(int(i), float(np.sqrt(max(float(d), 0.0)))) for d, i in zip(d2, ids) if i >= 0]
        if max_distance is not None:
            found = [(i, d) for i, d in found if d <= max_distance]
        if not found:
            return []
        rows = self.photos([i for i, _ in found])
        results = []
        for photo_id, distance in found:
            row = rows.get(photo_id)
            if row is None or (prefix is not None and not row.path.startswith(prefix)):
                continue  # a vector whose row a concurrent indexer has not committed or just removed
            results.append(SearchResult.from_row(row, distance))
        return results

    def photos(self, ids: Sequence[int]) -> dict[int, Photo]:
        with Session(self.index.engine, expire_on_commit=False) as session:
            return {p.id: p for p in session.scalars(select(Photo).where(Photo.id.in_(list(ids))))}

    def photo(self, photo_id: int) -> Photo | None:
        return self.photos([photo_id]).get(photo_id)

    def stop_batching(self) -> None:
        if self.queue is not None:
            self.queue.close()
            self.queue = None
        if self.search_batcher is not None:
            self.search_batcher.close()
            self.search_batcher = None

    def close(self) -> None:
        self.stop_batching()
        self.index.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _nearer_of(found: list[SearchResult], by_mirror: list[SearchResult], k: int) -> list[SearchResult]:
    """The query's results with what its mirror found within MIRROR_MAX_DISTANCE: each photo once,
    at its smaller distance, nearest first."""
    best: dict[int, SearchResult] = {}
    for result in found + [r for r in by_mirror if r.distance <= MIRROR_MAX_DISTANCE]:
        if result.id not in best or result.distance < best[result.id].distance:
            best[result.id] = result
    return sorted(best.values(), key=lambda r: r.distance)[:k]


def _checked_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def _checked_count(name: str, value: int) -> int:
    """A setting that counts results (`rerank`, `expand`): 0 or more."""
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value
