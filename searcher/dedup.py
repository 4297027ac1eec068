"""`diffsearch dedup`: groups of near-duplicate photos.

Two photos are linked when one is a duplicate of the other by `DedupRule`; a group is a connected
component of links. Each photo's nearest photos are found by their vectors; where the index keeps
every photo's latent, each pair is then verified spatially (searcher.verification: how well the two
match somewhere in each other), and the rule reads the verified distance
sqrt(distance^2 + match_weight x (1 - match)) in place of the distance, and a strict vectors-only
rule (ALSO_BY_VECTORS) adds its links on the plain distances. The rule has two parts:

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
threshold applies. Verification reads every photo's file once more (its centre square at two
smaller zooms is encoded: ~45 ms a photo in all on 2 cores); `match_weight` 0 skips it, and an index
without kept latents (a pixel-space model, or one indexed before latents were kept) cannot have it:
both use the vectors-only rule (`VECTORS_ONLY`), calibrated for plain distances. Calibration:
bench/dedup.py (bench/results/dedup.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import faiss
import numpy as np
import numpy.typing as npt
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from indexer.errors import ConfigError, InvalidImageError
from indexer.storage.rows import Photo, PhotoLatent, read_latents
from searcher.results import DuplicateGroup, SearchResult
from searcher.searcher import Searcher
from searcher.verification import pair_matches, sorted_rows, verified_distances

logger = logging.getLogger(__name__)

# Verified distances (searcher.verification) of the bundled model's instance dims. Chosen on
# bench/dedup.py (Caltech test photos with edited copies added; one half of the originals chooses,
# the other half reports): the most recall at pair precision >= 0.85 with one copy each and with
# 1-5, keeping the 64 bundled samples free of groups. Reported half, alone: 0.855 / 0.595 (one
# copy), 0.924 / 0.539 (1-5 copies); with ALSO_BY_VECTORS' links 0.855 / 0.617, 0.926 / 0.577; the
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
    neighbours: npt.NDArray[np.int64], distances: npt.NDArray[np.floating], rule: DedupRule, *more: tuple[npt.NDArray[np.int64], npt.NDArray[np.floating], DedupRule]
) -> list[list[int]]:
    """Connected components (2+ members, as row numbers) of the rule's links, and of each further
    (neighbours, distances, rule)'s links.

    `neighbours[i]`, `distances[i]`: row i's nearest other rows, ascending (-1 pads a short row)."""
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
                parent[root(a)] = root(int(b))
    members: dict[int, list[int]] = {}
    for i in range(len(parent)):
        members.setdefault(root(i), []).append(i)
    return [group for group in members.values() if len(group) > 1]


def groups_of(
    neighbours: npt.NDArray[np.int64],
    distances: npt.NDArray[np.floating],
    matches: npt.NDArray[np.floating] | None,
    rule: DedupRule,
    also: DedupRule | None = None,
) -> list[list[int]]:
    """Dedup's groups from its neighbour lists (rows ascending by distance). With `matches` and a
    verifying rule, its links on the verified distances (re-sorted) and `also`'s on the plain ones;
    otherwise the rule's on the plain distances."""
    if matches is None or not rule.match_weight:
        return duplicate_groups(neighbours, distances, rule)
    verified = sorted_rows(neighbours, verified_distances(distances, matches, rule.match_weight))
    return duplicate_groups(*verified, rule, *([(neighbours, distances, also)] if also else []))


# The rule for plain distances (no verification), as shipped before verification: pair precision /
# recall 0.749 / 0.512 with one edited copy each, 0.904 / 0.595 with 1-5 (bench/results/dedup.md).
VECTORS_ONLY = DedupRule(threshold=0.20, gap=0.70, cap=0.60, match_weight=0.0)

# Links a verifying rule adds from a strict gap test on the plain distances: tilted and covered
# copies match their original less well (their template is turned or hidden) but stay very close by
# vectors. Chosen after the verified rule by the same bench and test (precision >= 0.85 on the
# choosing halves): reported, one copy 0.855 / 0.595 -> 0.855 / 0.617, 1-5 copies 0.924 / 0.539 ->
# 0.926 / 0.577; tilts grouped 0.38 -> 0.62, banners 0.59 -> 0.76.
ALSO_BY_VECTORS = DedupRule(threshold=0.10, gap=0.50, cap=0.40, match_weight=0.0)


def default_rule(verifiable: bool, **given: float | int | None) -> DedupRule:
    """The default rule for an index that can (or cannot) be verified, with the `given` fields
    (None: not given) in place of its own. A match_weight of 0 given means the vectors-only rule."""
    chosen = {name: value for name, value in given.items() if value is not None}
    base = DedupRule() if verifiable and chosen.get("match_weight", 1) != 0 else VECTORS_ONLY
    return replace(base, **chosen)


def can_verify(searcher: Searcher) -> bool:
    """Whether the index can be verified spatially: its model keeps latents and every photo has one."""
    if not searcher.embedder.keeps_latents:
        return False
    with Session(searcher.index.engine) as session:
        photos = session.scalar(select(func.count(Photo.id))) or 0
        latents = session.scalar(select(func.count(PhotoLatent.id))) or 0
    return photos > 0 and latents >= photos


def find_duplicates(searcher: Searcher, rule: DedupRule | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate photos in the index, largest group first.

    Where the model's projection names the dims trained to tell photos apart (`instance_dims`: the
    bundled model's contrastive head), photos are compared on those alone, in a flat FAISS index
    of them: the whitening and class parts put different photos of one class close together (eight
    Faces_easy samples closer to each other than a grayscale copy is to its original), which is
    what search wants and dedup must not see. Otherwise the index's own vectors are searched.
    Then each photo's neighbours are verified spatially where the index allows, and the links of
    ALSO_BY_VECTORS on plain distances are added (the module docstring). `rule` None:
    `default_rule` for this index."""
    store = searcher.fresh_vectors()
    ids = np.asarray(store.ids(), dtype=np.int64)
    if len(ids) < 2:
        return []
    mean = latent_mean(searcher, ids) if rule is None or rule.match_weight else None
    rule = rule or default_rule(mean is not None)
    if rule.match_weight and mean is None:
        logger.warning("dedup: some photos have no kept latent (a pixel-space model, or photos indexed before latents were kept); comparing vectors alone")
    vector_of, neighbours, distances = nearest_neighbours(searcher, ids, max(rule.neighbours, ALSO_BY_VECTORS.neighbours) + 2)
    matches = None
    if rule.match_weight and mean is not None:
        templates = PhotoTemplates(searcher, ids)
        matches = pair_matches(neighbours, templates, lambda rows: latents_by_row(searcher, ids, rows), mean)
        if templates.unreadable:
            logger.warning("dedup: %d photo(s) could not be read again; each was verified with its kept latent alone", templates.unreadable)
    groups = []
    for rows in groups_of(neighbours, distances, matches, rule, ALSO_BY_VECTORS):
        rows = sorted(rows, key=lambda r: int(ids[r]))
        group = [int(ids[r]) for r in rows]
        members = np.vstack([vector_of(r) for r in rows])
        gaps = np.linalg.norm(members - members[0], axis=1)
        photos_by_id = searcher.photos(group)
        photos = [SearchResult.from_row(photos_by_id[i], float(d)) for i, d in zip(group, gaps) if i in photos_by_id]
        if len(photos) >= 2:
            groups.append(DuplicateGroup(photos=photos))
    return sorted(groups, key=lambda g: (-len(g.photos), g.photos[0].id))


def nearest_neighbours(searcher: Searcher, ids: npt.NDArray[np.int64], k: int):  # noqa: ANN201 - a vector getter and two arrays
    """(vector_of(row), neighbours, distances): each row's k - 1 nearest other rows and their
    Euclidean distances, ascending (-1 and inf pad short rows), on the dims dedup compares."""
    store = searcher.fresh_vectors()
    projection = searcher.embedder.projection
    k = min(k, len(ids))  # the photo itself, its neighbours, one more for the gap
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
    return vector_of, neighbours, distances


def latent_mean(searcher: Searcher, ids: npt.NDArray[np.int64]) -> torch.Tensor | None:
    """The mean latent cell (C,) over every photo's kept latent; None when the model keeps no
    latents or a photo has none (nothing to verify against)."""
    if not searcher.embedder.keeps_latents:
        return None
    total, cells = None, 0
    with Session(searcher.index.engine) as session:
        for start in range(0, len(ids), 1024):
            block = [int(i) for i in ids[start : start + 1024]]
            latents = read_latents(session, block)
            if len(latents) < len(block):
                return None
            for latent in latents.values():
                flat = torch.from_numpy(latent.astype(np.float32)).flatten(1)
                total = flat.sum(1) if total is None else total + flat.sum(1)
                cells += flat.shape[1]
    return None if total is None else total / cells


def latents_by_row(searcher: Searcher, ids: npt.NDArray[np.int64], rows: list[int]) -> dict[int, torch.Tensor]:
    with Session(searcher.index.engine) as session:
        found = read_latents(session, [int(ids[r]) for r in rows])
    return {r: torch.from_numpy(found[int(ids[r])].astype(np.float32)) for r in rows}


class PhotoTemplates:
    """A row's re-ranking templates, as search makes a query's: the centre of its kept latent, and
    its file's centre square encoded at the smaller zooms. A file that can no longer be read (moved,
    deleted, damaged since indexing) gives the kept latent's template alone, and is counted."""

    def __init__(self, searcher: Searcher, ids: npt.NDArray[np.int64]) -> None:
        self.searcher, self.ids = searcher, ids
        self.paths = {i: p.path for i, p in searcher.photos([int(i) for i in ids]).items()}
        self.unreadable = 0

    def __call__(self, row: int) -> list[torch.Tensor]:
        photo_id = int(self.ids[row])
        latent = latents_by_row(self.searcher, self.ids, [row])[row].numpy()
        try:
            return self.searcher.templates(self.paths[photo_id], latent)
        except (InvalidImageError, KeyError) as exc:
            self.unreadable += 1
            logger.warning("dedup: %s; verifying photo %d with its kept latent alone", exc, photo_id)
            return [self.searcher.embedder.query_template(latent)]
