"""Query expansion with the verified top result: photos like the best match come next.

A photo's vector is one view of its class; the photos a search finds first hold other views of
what the query shows. Average query expansion (Chum et al., "Total Recall", 2007; the alpha-QE
of Radenovic et al., 2018) searches again with the query plus its nearest photos, weighted by
their cosine to it:

    q' = normalise(q + sum_{i < n} cos(q, x_i) x_i)

Expanding with a wrong neighbour drifts the query away from the photo a user looks for, so here
(as in Total Recall) the expansion comes after spatial verification (searcher.rerank): the
re-ranked first result stays first, the query is expanded with the first `n` re-ranked results,
and the rest of the re-ranked short list is ordered by

    distance(q', x)^2 - MATCH_WEIGHT x match score

Results keep their distances to the query itself. A result at distance under SAME is the query
photo (an indexed photo searched with, or a byte-identical copy): it stays first and adds
nothing to the expansion.

Chosen on Caltech val (bench/query_expansion.py, bench/results/query-expansion.md): with
re-ranking, class P@10 0.541 -> 0.553; expanding before re-ranking instead lost re-framed copies
(0.903 -> 0.877). Caltech test, as searched: P@10 0.638 -> 0.653. Near-duplicate recall@1 is
unchanged by construction (the first result is kept).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from searcher.rerank import order_key
from searcher.results import SearchResult

# How many of the re-ranked first results expand the query (best of 1, 2 and 3 on validation).
EXPAND = 2
# Closer than this is the query photo itself (re-embedding one file gives the same vector).
SAME = 1e-3


def expanded_query(query: npt.NDArray[np.float32], neighbours: npt.NDArray[np.float32], distances: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The unit vector along `query` + each neighbour weighted by its cosine to the query (>= 0)."""
    weights = np.clip(1.0 - np.asarray(distances, dtype=np.float64) ** 2 / 2.0, 0.0, None)
    expanded = np.asarray(query, dtype=np.float64) + (weights[:, None] * np.asarray(neighbours, dtype=np.float64)).sum(0)
    return (expanded / max(float(np.linalg.norm(expanded)), 1e-12)).astype(np.float32)


def expand(
    results: list[SearchResult], query: npt.NDArray[np.float32], vectors: Mapping[int, npt.NDArray[np.float32]], n: int = EXPAND
) -> list[SearchResult]:
    """Re-ranked `results` (those carrying a match score come first) with everything after the
    first result (and after the query photo itself) ordered by the expanded query. Unchanged when
    `n` is 0, when fewer than two results could move, or when a vector is missing."""
    head = results[: next((i for i, r in enumerate(results) if r.match is None), len(results))]
    same = next((i for i, r in enumerate(head) if r.distance >= SAME), len(head))
    kept = same + 1
    if n <= 0 or len(head) - kept < 2 or any(r.id not in vectors for r in head[same:]):
        return results
    used = head[same : same + n]
    q = expanded_query(query, np.stack([vectors[r.id] for r in used]), np.array([r.distance for r in used]))
    movable = head[kept:]
    keys = [order_key(float(np.sum((vectors[r.id] - q) ** 2)), float(r.match or 0.0)) for r in movable]
    order = np.argsort(keys, kind="stable")
    return head[:kept] + [movable[i] for i in order] + results[len(head) :]
