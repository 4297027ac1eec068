"""Query expansion with the verified first result (searcher.expansion), by hand and through a real Searcher."""

import numpy as np
import pytest

from indexer.errors import ConfigError
from searcher.expansion import expand, expanded_query
from searcher.rerank import MATCH_WEIGHT, RERANK
from searcher.results import SearchResult


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def result(id_: int, vector: np.ndarray, query: np.ndarray, match: float | None = 0.3) -> SearchResult:
    distance = float(np.linalg.norm(vector - query))
    return SearchResult(id=id_, path=f"/p/{id_}", distance=distance, score=1 - distance**2 / 2, width=1, height=1, match=match)


def test_the_expanded_query_adds_neighbours_weighted_by_their_cosine():
    q, x1, x2 = unit(1, 0, 0), unit(1, 1, 0), unit(0, 0, 1)  # cosines 0.707 and 0 to the query
    got = expanded_query(q, np.stack([x1, x2]), np.linalg.norm(np.stack([x1, x2]) - q, axis=1))
    want = q + 0.5**0.5 * x1  # a neighbour at a right angle adds nothing
    np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-6)


def test_the_first_result_stays_and_photos_like_it_come_next():
    q = unit(1, 0, 0)
    vectors = {1: unit(1, 1, 0), 2: unit(1, 0, 0.5), 3: unit(1, 0.9, 0), 4: unit(0, 1, 1)}
    results = [result(i, vectors[i], q) for i in (1, 2, 3)] + [result(4, vectors[4], q, match=None)]
    assert results[1].distance < results[2].distance  # photo 2 is nearer the query than photo 3 ...
    out = expand(results, q, vectors, n=1)
    assert [r.id for r in out] == [1, 3, 2, 4]  # ... but 3 is like the verified first result; 4 was not re-ranked
    assert [r.distance for r in out] == [results[i].distance for i in (0, 2, 1, 3)]  # distances stay the query's own
    # match still counts: a strong enough match keeps photo 2 ahead
    matched = [results[0], results[1].model_copy(update={"match": 0.9}), results[2], results[3]]
    assert [r.id for r in expand(matched, q, vectors, n=1)] == [1, 2, 3, 4]


def test_the_query_photo_itself_stays_first_and_does_not_expand():
    q = unit(1, 0, 0)
    vectors = {0: q.copy(), 1: unit(1, 1, 0), 2: unit(1, 0, 0.5), 3: unit(1, 0.9, 0)}
    results = [result(i, vectors[i], q) for i in (0, 1, 2, 3)]
    assert results[0].distance == 0.0
    assert [r.id for r in expand(results, q, vectors, n=1)] == [0, 1, 3, 2]  # itself, then as above


def test_nothing_moves_without_expansion_or_vectors():
    q = unit(1, 0, 0)
    vectors = {1: unit(1, 1, 0), 2: unit(1, 0, 0.5), 3: unit(1, 0.9, 0)}
    results = [result(i, vectors[i], q) for i in (1, 2, 3)]
    assert expand(results, q, vectors, n=0) == results
    assert expand(results, q, {i: v for i, v in vectors.items() if i != 3}, n=1) == results
    assert expand([r.model_copy(update={"match": None}) for r in results], q, vectors, n=1)[1].id == 2  # not re-ranked


def test_a_searcher_expands_the_re_ranked_list_only(searcher, sample_photos):
    query = sample_photos[7]
    expanded = searcher.query(query, k=RERANK)
    plain = searcher.query(query, k=RERANK, expand=0)
    assert expanded[0] == plain[0] and sorted(r.id for r in expanded) == sorted(r.id for r in plain)
    vectors = {r.id: searcher.fresh_vectors().reconstruct(r.id) for r in plain}
    q = searcher.embed([query], mirrored=True)[0]  # as the search embeds it, with its mirror
    used = [r for r in plain if r.distance >= 1e-3][:2]
    q2 = expanded_query(q, np.stack([vectors[r.id] for r in used]), np.array([r.distance for r in used]))
    keys = [float(np.sum((vectors[r.id] - q2) ** 2)) - MATCH_WEIGHT * r.match for r in expanded[2:]]
    assert keys == sorted(keys)  # past the query photo and the first other photo, by the expanded query
    assert [r.id for r in expanded] != [r.id for r in plain]  # and that is a different order here
    assert searcher.query(query, k=5, rerank=0) == searcher.query(query, k=5, rerank=0, expand=0)  # nothing verified
    with pytest.raises(ConfigError, match="expand"):
        searcher.query(query, expand=-1)
