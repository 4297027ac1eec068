"""The FAISS side of an index: vectors keyed by SQLite row id, saved atomically.

The index is always an IndexIDMap2 around a factory-built index. Index types that need training
(IVF, PQ) keep their vectors in an exact Flat index until enough exist to train on, then switch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from indexer.errors import ConfigError, IndexCorruptError

log = logging.getLogger(__name__)

VECTORS_FILE = "vectors.faiss"
MIN_TRAIN_PER_CENTROID = 39  # FAISS warns below this many training points per IVF centroid
MIN_TRAIN = 1_000


def _factory(dim: int, spec: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, spec, faiss.METRIC_L2)
    except RuntimeError as exc:
        raise ConfigError(f"index type {spec!r} is not a valid FAISS index_factory string: {exc}") from None


def _wrap(index: faiss.Index) -> faiss.IndexIDMap2:
    return faiss.IndexIDMap2(index)


class VectorStore:
    """Vectors with int64 ids; exact Euclidean search for 'Flat', approximate for the others."""

    filters_natively = False  # a path filter is applied by the caller, over-fetching

    def __init__(self, path: Path, dim: int, index_type: str = "Flat") -> None:
        self.path = Path(path)
        self.dim = dim
        self.index_type = index_type
        probe = _factory(dim, index_type)  # validates the string now, not at the first add
        self.needs_training = not probe.is_trained
        self.index: faiss.IndexIDMap2 = _wrap(faiss.IndexFlatL2(dim) if self.needs_training else probe)
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            index = faiss.read_index(str(self.path))
        except (RuntimeError, MemoryError, ValueError, OSError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise IndexCorruptError(f"cannot read {self.path} ({first_line[:200]}): run `diffsearch check --repair`") from None
        if index.d != self.dim:
            raise IndexCorruptError(f"{self.path} holds {index.d}-d vectors, the index expects {self.dim}")
        if not isinstance(index, faiss.IndexIDMap2):
            raise IndexCorruptError(f"{self.path} is a {type(index).__name__}, not an id-mapped diffsearch index")
        # read_index already returns the concrete, owning proxy. faiss.downcast_index would give a
        # non-owning one, and the index would be freed under it.
        self.index = index

    @property
    def staging(self) -> bool:
        """True while a trainable index type still holds its vectors in the Flat staging index."""
        inner = faiss.downcast_index(self.index.index)
        return self.needs_training and isinstance(inner, faiss.IndexFlat)

    @property
    def kind(self) -> str:
        return f"{self.index_type} (Flat until {self.train_threshold} vectors)" if self.staging else self.index_type

    @property
    def train_threshold(self) -> int:
        nlist = getattr(faiss.downcast_index(_factory(self.dim, self.index_type)), "nlist", 0)
        return max(MIN_TRAIN, MIN_TRAIN_PER_CENTROID * nlist)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> npt.NDArray[np.int64]:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def extent(self) -> tuple[int, int]:
        """(number of vectors, largest id; 0 when empty), read in place: no copy of the ids."""
        n = int(self.index.id_map.size())
        return n, int(faiss.rev_swig_ptr(self.index.id_map.data(), n).max()) if n else 0

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[1:] != (self.dim,):
            raise ValueError(f"vectors must be (n, {self.dim}), got {vectors.shape}")
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        if self.staging and len(self) >= self.train_threshold:
            self._train_and_switch()

    def _all_vectors(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        ids = self.ids()
        if not len(ids):
            return ids, np.zeros((0, self.dim), np.float32)
        inner = faiss.downcast_index(self.index.index)
        try:
            if hasattr(inner, "make_direct_map"):
                inner.make_direct_map()
            vectors = inner.reconstruct_n(0, len(ids))
        except RuntimeError:
            vectors = np.vstack([self.index.reconstruct(int(i))[None] for i in ids])
        return ids, np.asarray(vectors, dtype=np.float32)

    def nonfinite_ids(self) -> npt.NDArray[np.int64]:
        """Ids of vectors holding NaN or inf (never returned by a search, so never noticed otherwise)."""
        ids, vectors = self._all_vectors()
        return ids[~np.isfinite(vectors).all(axis=1)] if len(ids) else ids

    def _train_and_switch(self) -> None:
        ids, vectors = self._all_vectors()
        target = _factory(self.dim, self.index_type)
        log.info("training %s on %d vectors", self.index_type, len(ids))
        target.train(vectors)
        self.index = _wrap(target)
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: npt.NDArray[np.int64] | list[int]) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        try:
            return int(self.index.remove_ids(ids))
        except RuntimeError:  # HNSW and a few others cannot remove: rebuild without those ids
            all_ids, vectors = self._all_vectors()
            keep = ~np.isin(all_ids, ids)
            inner = _factory(self.dim, self.index_type)
            if not inner.is_trained:
                inner.train(vectors[keep])
            self.index = _wrap(inner)
            self.index.add_with_ids(vectors[keep], all_ids[keep])
            return int((~keep).sum())

    def reconstruct(self, id_: int) -> npt.NDArray[np.float32] | None:
        if not 0 <= int(id_) < 2**63:
            return None
        try:
            return self.index.reconstruct(int(id_)).astype(np.float32)
        except RuntimeError:
            return None

    def reconstruct_many(self, ids: Sequence[int]) -> dict[int, npt.NDArray[np.float32]]:
        """The stored vectors of those `ids` that have one."""
        return {int(i): v for i in ids if (v := self.reconstruct(int(i))) is not None}

    def search(
        self, queries: npt.NDArray[np.float32], k: int, path_prefix: str | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Squared L2 distances and ids, (n, k) each; missing neighbours have id -1 (path_prefix: unused)."""
        if len(self) == 0:
            n = queries.shape[0]
            return np.full((n, k), np.inf, np.float32), np.full((n, k), -1, np.int64)
        inner = faiss.downcast_index(self.index.index)
        if hasattr(inner, "nprobe"):
            inner.nprobe = min(inner.nlist, 32)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = max(64, 2 * k)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self) -> None:
        """Write to a temp file, fsync, then rename over the old one: a reader or a crash sees old or new, whole."""
        tmp = self.path.with_suffix(".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
