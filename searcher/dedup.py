"""`diffsearch dedup`: groups of near-duplicate photos (connected components under a distance threshold)."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from indexer.errors import ConfigError
from searcher.results import DuplicateGroup, SearchResult
from searcher.searcher import Searcher

# Euclidean distance between unit vectors. bench/near_duplicates.py (300 Caltech test photos x 10
# edits among 2,893) with the default's contrastive projection head: pair precision 0.974, recall
# 0.318 at 0.25; precision falls to 0.95 at 0.28 (recall 0.378), and the closest two different
# sample photos (two motorbikes) sit at 0.288. 0.25 stays, for precision (re-encodes and resizes sit
# far below it; the PCA-whitened release before found about 15% of heavily edited copies at 0.25).
DEFAULT_THRESHOLD = 0.25


def find_duplicates(searcher: Searcher, threshold: float = DEFAULT_THRESHOLD, neighbours: int = 16) -> list[DuplicateGroup]:
    """Photos linked by a chain of pairs closer than `threshold`, largest group first."""
    if threshold <= 0:
        raise ConfigError(f"threshold must be > 0, got {threshold}")
    store = searcher._fresh_vectors()
    ids = store.ids()
    if len(ids) < 2:
        return []
    parent = {int(i): int(i) for i in ids}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in tqdm(range(0, len(ids), 256), desc="dedup", unit="block", leave=False):
        block = ids[start : start + 256]
        vectors = np.vstack([store.reconstruct(int(i)) for i in block])
        d2, found = store.search(vectors, min(neighbours, len(ids)))
        for a, row_d2, row_ids in zip(block, d2, found):
            for d, b in zip(row_d2, row_ids):
                if b >= 0 and b != a and np.sqrt(max(float(d), 0.0)) <= threshold:
                    parent[root(int(a))] = root(int(b))
    members: dict[int, list[int]] = {}
    for i in parent:
        members.setdefault(root(i), []).append(i)
    groups = []
    for group in members.values():
        if len(group) < 2:
            continue
        group.sort()
        anchor = store.reconstruct(group[0])
        vectors = np.vstack([store.reconstruct(i) for i in group])
        distances = np.linalg.norm(vectors - anchor, axis=1)
        rows = searcher.photos(group)
        photos = [SearchResult.from_row(rows[i], float(d)) for i, d in zip(group, distances) if i in rows]
        if len(photos) >= 2:
            groups.append(DuplicateGroup(photos=photos))
    return sorted(groups, key=lambda g: (-len(g.photos), g.photos[0].id))
