"""When a photo's nearest neighbours count as its duplicates: `DedupRule` (an absolute threshold
and a gap test, explained in searcher/dedup.py's docstring), the calibrated defaults, and the
groups its links make. Plain numbers only, so the CLI can show the defaults without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from indexer.errors import ConfigError

# Verified distances (searcher.verification) of the bundled model's instance dims. Chosen on
# bench/dedup.py (Caltech test photos with edited copies added; one half of the originals chooses,
# the other half reports): the most recall at pair precision >= 0.85 with one copy each and with
# 1-5, keeping the 64 bundled samples free of groups. Chosen again when verification's templates
# came from the kept latents (Embedder.latent_templates). Reported half, alone: 0.846 / 0.660 (one
# copy), 0.931 / 0.602 (1-5 copies); with ALSO_BY_VECTORS' links 0.848 / 0.666, 0.933 / 0.626; the
# best vectors-only rule by the same test 0.857 / 0.405 and 0.953 / 0.478 (bench/results/dedup.md).
# Weights 1, 3 and 4 did worse; 2 is search's MATCH_WEIGHT.
DEFAULT_THRESHOLD = 0.26
DEFAULT_GAP = 0.85
DEFAULT_CAP = 1.04
DEFAULT_MATCH_WEIGHT = 2.0

@dataclass(frozen=True)
class DedupRule:
    """When a photo's neighbours count as its duplicates (see the module docstring)."""

    threshold: float = DEFAULT_THRESHOLD
    gap: float = DEFAULT_GAP  # 0 turns the gap test off: the threshold alone decides
    cap: float = DEFAULT_CAP
    neighbours: int = 16
    match_weight: float = DEFAULT_MATCH_WEIGHT  # 0: vectors alone, no spatial verification

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ConfigError(f"threshold must be > 0, got {self.threshold}")
        if not 0 <= self.gap < 1:
            raise ConfigError(f"gap must be in [0, 1) (0: off), got {self.gap}")
        if self.gap and self.cap <= 0:
            raise ConfigError(f"cap must be > 0, got {self.cap}")
        if self.neighbours < 1:
            raise ConfigError(f"neighbours must be >= 1, got {self.neighbours}")
        if self.match_weight < 0:
            raise ConfigError(f"match_weight must be >= 0 (0: off), got {self.match_weight}")

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


def duplicate_groups(
    neighbours: npt.NDArray[np.int64],
    distances: npt.NDArray[np.floating],
    rule: DedupRule,
    *more: tuple[npt.NDArray[np.int64], npt.NDArray[np.floating], DedupRule],
    within: npt.NDArray[np.bool_] | None = None,
) -> list[list[int]]:
    """Connected components (2+ members, as row numbers) of the rule's links, and of each further
    (neighbours, distances, rule)'s links.

    `neighbours[i]`, `distances[i]`: row i's nearest other rows, ascending (-1 pads a short row).
    `within`: only links between two of these rows count (the rule still reads every neighbour:
    a photo elsewhere is part of the crowd the gap test compares with)."""
    parent = list(range(len(neighbours)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for source_neighbours, source_distances, source_rule in [(neighbours, distances, rule), *more]:
        for a, (row_ids, row_d) in enumerate(zip(source_neighbours, source_distances)):
            valid = row_ids >= 0
            for b in row_ids[valid][: source_rule.duplicates(row_d[valid])]:
                if within is None or (within[a] and within[int(b)]):
                    parent[root(a)] = root(int(b))
    members: dict[int, list[int]] = {}
    for i in range(len(parent)):
        members.setdefault(root(i), []).append(i)
    return [group for group in members.values() if len(group) > 1]


# The rule for plain distances (no verification), as shipped before verification: pair precision /
# recall 0.748 / 0.509 with one edited copy each, 0.903 / 0.593 with 1-5 (bench/results/dedup.md).
VECTORS_ONLY = DedupRule(threshold=0.20, gap=0.70, cap=0.60, match_weight=0.0)

# Links a verifying rule adds from a strict gap test on the plain distances: tilted and covered
# copies match their original less well (their template is turned or hidden) but stay very close by
# vectors. Chosen after the verified rule by the same bench and test (precision >= 0.85 on the
# choosing halves; chosen again with the kept-latent templates): reported, one copy 0.846 / 0.660
# -> 0.848 / 0.666, 1-5 copies 0.931 / 0.602 -> 0.933 / 0.626; banners grouped 0.71 -> 0.82.
ALSO_BY_VECTORS = DedupRule(threshold=0.10, gap=0.50, cap=0.40, match_weight=0.0)


def default_rule(verifiable: bool, **given: float | int | None) -> DedupRule:
    """The default rule for an index that can (or cannot) be verified, with the `given` fields
    (None: not given) in place of its own. A match_weight of 0 given means the vectors-only rule."""
    chosen = {name: value for name, value in given.items() if value is not None}
    base = DedupRule() if verifiable and chosen.get("match_weight", 1) != 0 else VECTORS_ONLY
    return replace(base, **chosen)
