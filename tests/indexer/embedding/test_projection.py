import numpy as np

from indexer.embedding.projection import fit_projection, load_projections


def test_whitening_decorrelates_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))).astype(np.float32) + 3.0
    projection = fit_projection(x, key="abc", dim=6, shrinkage=0.0)
    y = projection.apply(x)
    assert y.shape == (500, 6)
    np.testing.assert_allclose(np.cov(y.T), np.eye(6), atol=0.05)
    projection.save(tmp_path)
    loaded = load_projections(tmp_path)["abc"]
    np.testing.assert_array_equal(loaded.apply(x), y)
    assert loaded.digest == projection.digest


def test_shrinkage_keeps_weak_directions_weak():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4)).astype(np.float32) * np.array([10, 5, 1, 0.1], np.float32)
    strong = fit_projection(x, key="k", dim=4, shrinkage=5.0).apply(x).std(axis=0)
    assert strong[0] > 5 * strong[3]
