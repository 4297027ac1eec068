"""`diffsearch dedup`: groups of near-duplicate photos.

Two photos are linked when one is a duplicate of the other by `DedupRule`; a group is a connected
component of links. The rule has two parts:

- an absolute distance (`threshold`) under which any two photos are duplicates: re-encodes,
  resizes and mild edits land far below it;
- a gap test for heavier edits (crops, banners, grayscale): a photo's nearest neighbours
  d_1 <= d_2 <= ... are duplicates up to the last j (among the first `neighbours`) where the next
  photo is clearly further away, d_j <= gap * d_{j+1}, as long as d_j <= `cap`. An edited copy is
  much closer to its original than the original's other neighbours are, even when the absolute
  distance is large; how close "much closer" is depends on how crowded that part of the
  collection is, which one global threshold cannot know. It is Lowe's ratio test, made to let
  groups of several copies through (the jump after the last copy counts, not after the first).

The gap test needs a crowd to compare with: with fewer than `neighbours` + 2 photos only the
threshold applies. Calibration: bench/near_duplicates.py (bench/results/near-duplicates.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from indexer.errors import ConfigError
from searcher.results import DuplicateGroup, SearchResult
from searcher.searcher import Searcher

# Euclidean distances between unit vectors (of the bundled model's instance dims). Chosen on
# bench/near_duplicates.py (Caltech test photos with edited copies added, one half of the originals;
# the other half reports), keeping the 64 bundled samples free of groups: with one edited copy
# each, pair precision / recall 0.629 / 0.394 (1-5 copies: 0.866 / 0.529), where the release
# before found 0.691 / 0.303 (0.858 / 0.336) with its own rule (bench/results/near-duplicates.md).
DEFAULT_THRESHOLD = 0.20
DEFAULT_GAP = 0.70
DEFAULT_CAP = 0.60


@dataclass(frozen=True)
class DedupRule:
    """When a photo's neighbours count as its duplicates (see the module docstring)."""

    threshold: float = DEFAULT_THRESHOLD
    gap: float = DEFAULT_GAP  # 0 turns the gap test off: the threshold alone decides
    cap: float = DEFAULT_CAP
    neighbours: int = 16

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ConfigError(f"threshold must be > 0, got {self.threshold}")
        if not 0 <= self.gap < 1:
            raise ConfigError(f"gap must be in [0, 1) (0: off), got {self.gap}")
        if self.gap and self.cap <= 0:
            raise ConfigError(f"cap must be > 0, got {self.cap}")
        if self.neighbours < 1:
            raise ConfigError(f"neighbours must be >= 1, got {self.neighbours}")

    def duplicates(self, distances: npt.NDArray[np.floating]) -> int:
        """How many of a photo's nearest neighbours are its duplicates.

        `distances`: ascending distances to its nearest other photos, at least `neighbours` + 1 of
        them for the gap test to apply (fewer: the threshold alone)."""
        d = np.asarray(distances, dtype=np.float64)[: self.neighbours + 1]
        count = int(np.searchsorted(d[: self.neighbours], self.threshold, side="right"))
        if self.gap and len(d) > self.neighbours:
            cuts = np.nonzero((d[:-1] <= self.gap * d[1:]) & (d[:-1] <= self.cap))[0]
            if len(cuts):
                count = max(count, int(cuts[-1]) + 1)
        return count


def duplicate_groups(neighbours: npt.NDArray[np.int64], distances: npt.NDArray[np.floating], rule: DedupRule) -> list[list[int]]:
    """Connected components (2+ members, as row numbers) of the rule's links.

    `neighbours[i]`, `distances[i]`: row i's nearest other rows, ascending (-1 pads a short row)."""
    parent = list(range(len(neighbours)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, (row_ids, row_d) in enumerate(zip(neighbours, distances)):
        valid = row_ids >= 0
        for b in row_ids[valid][: rule.duplicates(row_d[valid])]:
            parent[root(a)] = root(int(b))
    members: dict[int, list[int]] = {}
    for i in range(len(parent)):
        members.setdefault(root(i), []).append(i)
    return [group for group in members.values() if len(group) > 1]


def find_duplicates(searcher: Searcher, rule: DedupRule | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate photos in the index, largest group first.

    Where the model's projection names the dims trained to tell photos apart (`instance_dims`: the
    bundled model's contrastive head), photos are compared on those alone, in a flat FAISS index
    of them: the whitening and class parts put different photos of one class close together (eight
    Faces_easy samples closer to each other than a grayscale copy is to its original), which is
    what search wants and dedup must not see. Otherwise the index's own vectors are searched."""
    rule = rule or DedupRule()
    store = searcher._fresh_vectors()
    ids = np.asarray(store.ids(), dtype=np.int64)
    if len(ids) < 2:
        return []
    projection = searcher.embedder.projection
    k = min(rule.neighbours + 2, len(ids))  # the photo itself, its neighbours, one more for the gap
    if projection is not None and projection.instance_dims:
        # Block by block, so that only the instance dims of the whole index are ever held at once.
        def instance_block(block: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
            found = store.reconstruct_many(block)
            return projection.instance_part(np.vstack([found[int(i)] for i in block]))

        vectors = np.vstack([instance_block(ids[start : start + 4096]) for start in range(0, len(ids), 4096)])
        flat = faiss.IndexFlatL2(vectors.shape[1])
        flat.add(vectors)

        def vector_of(r: int) -> npt.NDArray[np.float32]:
            return vectors[r]

        def search_rows(rows: npt.NDArray[np.int64]) -> tuple[np.ndarray, np.ndarray]:
            return flat.search(vectors[rows], k)  # row numbers already
    else:
        row_of = {int(i): r for r, i in enumerate(ids)}

        def vector_of(r: int) -> npt.NDArray[np.float32]:
            return store.reconstruct(int(ids[r]))

        def search_rows(rows: npt.NDArray[np.int64]) -> tuple[np.ndarray, np.ndarray]:
            d2, found = store.search(np.vstack([vector_of(int(r)) for r in rows]), k)
            return d2, np.array([[row_of.get(int(b), -1) for b in line] for line in found], dtype=np.int64)

    neighbours = np.full((len(ids), k - 1), -1, dtype=np.int64)
    distances = np.full((len(ids), k - 1), np.inf)
    for start in tqdm(range(0, len(ids), 256), desc="dedup", unit="block", leave=False):
        block = np.arange(start, min(start + 256, len(ids)))
        d2, found = search_rows(block)
        for a, row_d2, row_found in zip(block, d2, found):
            others = [(float(np.sqrt(max(d, 0.0))), int(b)) for d, b in zip(row_d2, row_found) if b >= 0 and b != a][: k - 1]
            for j, (d, b) in enumerate(others):
                distances[a, j], neighbours[a, j] = d, b
    groups = []
    for rows in duplicate_groups(neighbours, distances, rule):
        rows = sorted(rows, key=lambda r: int(ids[r]))
        group = [int(ids[r]) for r in rows]
        members = np.vstack([vector_of(r) for r in rows])
        gaps = np.linalg.norm(members - members[0], axis=1)
        photos_by_id = searcher.photos(group)
        photos = [SearchResult.from_row(photos_by_id[i], float(d)) for i, d in zip(group, gaps) if i in photos_by_id]
        if len(photos) >= 2:
            groups.append(DuplicateGroup(photos=photos))
    return sorted(groups, key=lambda g: (-len(g.photos), g.photos[0].id))
