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
threshold applies. Verification reads no file: each photo's templates come from its kept latent
(`Embedder.latent_templates`), so moved or deleted photos are verified too. `match_weight` 0 skips
it, and an index without kept latents (a pixel-space model, or one indexed before latents were
kept) cannot have it: both use the vectors-only rule (`VECTORS_ONLY`), calibrated for plain distances. Calibration:
bench/dedup.py (bench/results/dedup.md).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from indexer.raw import RAW_FORMAT
from indexer.storage import VectorIndex
from indexer.storage.rows import Photo, PhotoLatent
from searcher.dedup_rule import ALSO_BY_VECTORS, DedupRule, default_rule, duplicate_groups
from searcher.filters import normalise_prefix
from searcher.kept_latents import KeptLatents
from searcher.results import DuplicateGroup, SearchResult
from searcher.searcher import Searcher
from searcher.verification import Progress, pair_matches, sorted_rows, verified_distances

logger = logging.getLogger(__name__)

def groups_of(
    neighbours: npt.NDArray[np.int64],
    distances: npt.NDArray[np.floating],
    matches: npt.NDArray[np.floating] | None,
    rule: DedupRule,
    also: DedupRule | None = None,
    within: npt.NDArray[np.bool_] | None = None,
) -> list[list[int]]:
    """Dedup's groups from its neighbour lists (rows ascending by distance). With `matches` and a
    verifying rule, its links on the verified distances (re-sorted) and `also`'s on the plain ones;
    otherwise the rule's on the plain distances. `within`: only links between these rows count."""
    if matches is None or not rule.match_weight:
        return duplicate_groups(neighbours, distances, rule, within=within)
    verified = sorted_rows(neighbours, verified_distances(distances, matches, rule.match_weight))
    return duplicate_groups(*verified, rule, *([(neighbours, distances, also)] if also else []), within=within)


def can_verify(searcher: Searcher) -> bool:
    """Whether the index can be verified spatially: its model keeps latents and every photo has one."""
    if not searcher.embedder.keeps_latents:
        return False
    with Session(searcher.index.engine) as session:
        photos = session.scalar(select(func.count(Photo.id))) or 0
        latents = session.scalar(select(func.count(PhotoLatent.id))) or 0
    return photos > 0 and latents >= photos


def find_duplicates(
    searcher: Searcher, rule: DedupRule | None = None, path_prefix: str | None = None, progress: Progress | None = None
) -> list[DuplicateGroup]:
    """Groups of near-duplicate photos in the index, largest group first.

    Where the model's projection names the dims trained to tell photos apart (`instance_dims`: the
    bundled model's contrastive head), photos are compared on those alone, in a flat FAISS index
    of them: the whitening and class parts put different photos of one class close together (eight
    Faces_easy samples closer to each other than a grayscale copy is to its original), which is
    what search wants and dedup must not see. Otherwise the index's own vectors are searched.
    Then each photo's neighbours are verified spatially where the index allows, and the links of
    ALSO_BY_VECTORS on plain distances are added (the module docstring). `rule` None:
    `default_rule` for this index. `path_prefix`: only photos whose path starts with it (as search's
    filter), judged as in the whole index (their nearest photos are found among all, so the gap
    test has its crowd) and grouped only with each other: the groups the whole index would give,
    less the links to photos elsewhere, in the time those photos take. `progress`: told (photos
    verified, photos to verify) while pairs are verified, most of the time a large index takes (and
    no progress bar is drawn on stderr)."""
    store = searcher.fresh_vectors()
    ids = np.asarray(store.ids(), dtype=np.int64)
    within = None if path_prefix is None else rows_with_prefix(searcher, ids, path_prefix)
    if len(ids) < 2 or (within is not None and within.sum() < 2):
        return []
    latents = KeptLatents(searcher, ids)
    mean = latents.mean() if rule is None or rule.match_weight else None
    rule = rule or default_rule(mean is not None)
    if rule.match_weight and mean is None:
        logger.warning("dedup: some photos have no kept latent (a pixel-space model, or photos indexed before latents were kept); comparing vectors alone")
    k = max(rule.neighbours, ALSO_BY_VECTORS.neighbours) + 2
    vector_of, neighbours, distances = nearest_neighbours(searcher, ids, k, store, within, bar=progress is None)
    matches = None
    if rule.match_weight and mean is not None:
        matches = pair_matches(neighbours, latents.templates, latents.get, mean, progress)
    groups = []
    for rows in groups_of(neighbours, distances, matches, rule, ALSO_BY_VECTORS, within):
        photos_by_id = searcher.photos([int(ids[r]) for r in rows])
        rows = sorted((r for r in rows if int(ids[r]) in photos_by_id), key=lambda r: keep_order(photos_by_id[int(ids[r])]))
        if len(rows) < 2:
            continue
        members = np.vstack([vector_of(r) for r in rows])
        gaps = np.linalg.norm(members - members[0], axis=1)
        order = [0, *sorted(range(1, len(rows)), key=lambda i: (gaps[i], int(ids[rows[i]])))]
        groups.append(DuplicateGroup(photos=[SearchResult.from_row(photos_by_id[int(ids[rows[i]])], float(gaps[i])) for i in order]))
    return sorted(groups, key=lambda g: (-len(g.photos), g.photos[0].id))


def rows_with_prefix(searcher: Searcher, ids: npt.NDArray[np.int64], path_prefix: str) -> npt.NDArray[np.bool_]:
    """Which of `ids` are photos whose path starts with `path_prefix` (made absolute as search
    makes it; a plain prefix as search's filter, not indexer.storage.rows.photos_under's folders)."""
    prefix = normalise_prefix(path_prefix) or ""
    with Session(searcher.index.engine) as session:
        matching = np.fromiter(session.scalars(select(Photo.id).where(Photo.path.startswith(prefix, autoescape=True))), dtype=np.int64)
    return np.isin(ids, matching)


def keep_order(photo: Photo) -> tuple[int, bool, float, int, int]:
    """Sort key of a group's copies, the one to keep first: the most pixels (resized copies and
    crops lose), then a camera RAW file (its JPEG twin, written the same second, and every export
    are rendered from it), then the oldest file (a copy is made after its original; a PNG saved
    from a JPEG is larger without being better, so age comes before size), then the largest file
    (copies that kept the original's time: a heavier re-encode, a grayscale or blurred copy
    compress smaller), then the first indexed."""
    return (-photo.width * photo.height, photo.format != RAW_FORMAT, photo.mtime, -photo.size, photo.id)


def nearest_neighbours(  # noqa: ANN201 - a vector getter and two arrays
    searcher: Searcher,
    ids: npt.NDArray[np.int64],
    k: int,
    store: VectorIndex | None = None,
    only: npt.NDArray[np.bool_] | None = None,
    bar: bool = True,
):
    """(vector_of(row), neighbours, distances): each row's k - 1 nearest other rows and their
    Euclidean distances, ascending (-1 and inf pad short rows), on the dims dedup compares.
    `store`: the vectors `ids` were read from (None: the index's, read afresh). `only`: the rows
    whose lists are wanted (the others stay padded); None: every row. `bar`: a progress bar on stderr."""
    store = searcher.fresh_vectors() if store is None else store
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
    todo = np.arange(len(ids)) if only is None else np.nonzero(only)[0]
    for start in tqdm(range(0, len(todo), 256), desc="dedup", unit="block", leave=False, disable=not bar):
        block = todo[start : start + 256]
        d2, found = search_rows(block)
        for a, row_d2, row_found in zip(block, d2, found):
            others = [(float(np.sqrt(max(d, 0.0))), int(b)) for d, b in zip(row_d2, row_found) if b >= 0 and b != a][: k - 1]
            for j, (d, b) in enumerate(others):
                distances[a, j], neighbours[a, j] = d, b
    return vector_of, neighbours, distances
