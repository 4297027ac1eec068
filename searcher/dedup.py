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

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from indexer.errors import ConfigError
from searcher.results import DuplicateGroup, SearchResult
from searcher.searcher import Searcher

# Euclidean distances between unit vectors. Chosen on bench/near_duplicates.py (Caltech test
# photos with edited copies added, one half of the originals; the other half reports): with
# threshold 0.25 alone, 30-31% of the copies were found; this rule finds about twice as many at
# higher pair precision (the table is in bench/results/near-duplicates.md).
DEFAULT_THRESHOLD = 0.20
DEFAULT_GAP = 0.65
DEFAULT_CAP = 0.50


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
    """Groups of near-duplicate photos in the index, largest group first."""
    rule = rule or DedupRule()
    store = searcher._fresh_vectors()
    ids = np.asarray(store.ids(), dtype=np.int64)
    if len(ids) < 2:
        return []
    row = {int(i): r for r, i in enumerate(ids)}
    k = min(rule.neighbours + 2, len(ids))  # the photo itself, its neighbours, one more for the gap
    neighbours = np.full((len(ids), k - 1), -1, dtype=np.int64)
    distances = np.full((len(ids), k - 1), np.inf)
    for start in tqdm(range(0, len(ids), 256), desc="dedup", unit="block", leave=False):
        block = ids[start : start + 256]
        d2, found = store.search(np.vstack([store.reconstruct(int(i)) for i in block]), k)
        for r, (a, row_d2, row_ids) in enumerate(zip(block, d2, found), start):
            others = [(float(np.sqrt(max(d, 0.0))), row[int(b)]) for d, b in zip(row_d2, row_ids) if b >= 0 and b != a][: k - 1]
            for j, (d, b) in enumerate(others):
                distances[r, j], neighbours[r, j] = d, b
    groups = []
    for rows in duplicate_groups(neighbours, distances, rule):
        group = sorted(int(ids[r]) for r in rows)
        anchor = store.reconstruct(group[0])
        vectors = np.vstack([store.reconstruct(i) for i in group])
        gaps = np.linalg.norm(vectors - anchor, axis=1)
        photos_by_id = searcher.photos(group)
        photos = [SearchResult.from_row(photos_by_id[i], float(d)) for i, d in zip(group, gaps) if i in photos_by_id]
        if len(photos) >= 2:
            groups.append(DuplicateGroup(photos=photos))
    return sorted(groups, key=lambda g: (-len(g.photos), g.photos[0].id))
