"""Spatial verification of dedup's neighbour pairs: how well two photos match somewhere in each other.

Search re-ranks a query's short list by where the query's templates match in each photo's kept latent
(searcher.rerank); dedup asks the same of every photo and its nearest neighbours. Each photo's
templates (its kept latent's centre square, and that square shrunk to the smaller zooms, each
mirrored too: `Embedder.latent_templates`) slide over the latents of its neighbours and of the photos that list it as a neighbour.
A pair's match is the better of its two directions: a crop is found inside its original, not the
original inside the crop, whichever of the two is listed first. Every score is centred by one mean
latent cell (the whole index's), so a pair scores the same whatever else is listed beside it.

The pair's verified distance puts the match beside the vectors' distance as search's order does
(distance^2 - MATCH_WEIGHT x match, searcher.rerank), shifted so that a perfect match adds nothing:

    verified = sqrt(distance^2 + weight x (1 - match))

It is never below the distance, and 0 only for an identical photo; dedup's rule (searcher.dedup)
reads it as it reads a distance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from searcher.rerank import match_scores, with_mirrors

# Dedup's templates must lie wholly inside a neighbour's kept frame: its rule (searcher.dedup) was
# chosen on those scores (bench/dedup.py), as search keeps them (searcher.rerank.MIN_OVERLAP).
MIN_OVERLAP = 1.0

# Told (photos verified, photos to verify) as verification goes: a server shows it while it runs.
Progress = Callable[[int, int], None]


def pair_matches(
    neighbours: npt.NDArray[np.int64],
    templates_of: Callable[[int], Sequence[torch.Tensor]],
    latents_of: Callable[[Sequence[int]], Mapping[int, torch.Tensor]],
    mean: torch.Tensor,
    progress: Progress | None = None,
) -> npt.NDArray[np.float64]:
    """matches[a, j]: the match score of row a and its neighbour `neighbours[a, j]`, the better of
    a's templates in the neighbour's latent and the neighbour's templates in a's (-1 where the row
    is padded with -1). `templates_of(row)`: the row's templates, unmirrored; `latents_of(rows)`:
    their latents (C, H, W) by row; `mean`: the (C,) cell that centres every score; `progress`:
    told after each row (instead of a progress bar on stderr)."""
    n, k = neighbours.shape
    forward = np.full((n, k), -1.0)  # a's templates in its j-th neighbour's latent
    backward = np.full((n, k), -1.0)  # the j-th neighbour's templates in a's latent
    listed_by: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for b, row in enumerate(neighbours):
        for j, a in enumerate(row):
            if a >= 0:
                listed_by[int(a)].append((b, j))
    for a in tqdm(range(n), desc="verify", unit="photo", leave=False, disable=progress is not None):  # its caller shows progress
        own = [int(b) for b in neighbours[a] if b >= 0]
        candidates = list(dict.fromkeys(own + [b for b, _ in listed_by[a]]))
        if progress is not None:
            progress(a, n)
        if not candidates:
            continue
        latents = latents_of(candidates)
        scores = dict(zip(candidates, match_scores(with_mirrors(templates_of(a)), [latents[c] for c in candidates], mean, MIN_OVERLAP), strict=True))
        for j, b in enumerate(neighbours[a]):
            if b >= 0:
                forward[a, j] = scores[int(b)]
        for b, j in listed_by[a]:
            backward[b, j] = scores[b]
    if progress is not None:
        progress(n, n)
    return np.maximum(forward, backward)


def verified_distances(distances: npt.NDArray[np.floating], matches: npt.NDArray[np.floating], weight: float) -> npt.NDArray[np.float64]:
    """sqrt(distance^2 + weight x (1 - match)) (the module docstring); inf stays inf."""
    d = np.asarray(distances, dtype=np.float64)
    return np.sqrt(np.maximum(d * d + weight * (1.0 - np.asarray(matches, dtype=np.float64)), 0.0))


def sorted_rows(neighbours: npt.NDArray[np.int64], distances: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Each row's neighbours and distances re-sorted by distance, ascending (stable)."""
    order = np.argsort(distances, axis=1, kind="stable")
    return np.take_along_axis(neighbours, order, axis=1), np.take_along_axis(np.asarray(distances, dtype=np.float64), order, axis=1)
