from dataclasses import replace

import numpy as np
import pytest

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


def test_instance_dims_round_trip_and_pick_their_span_renormalised(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    whole = fit_projection(x, key="abc", dim=6)
    assert load_projections(whole.save(tmp_path / "a").parent.parent)["abc"].instance_dims is None
    split = replace(whole, instance_dims=(2, 5))
    loaded = load_projections(split.save(tmp_path / "b").parent.parent)["abc"]
    assert loaded.instance_dims == (2, 5) and loaded.digest == whole.digest  # the vectors are the same ones
    v = whole.apply(x)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    part = loaded.instance_part(v)
    np.testing.assert_allclose(np.linalg.norm(part, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(part * np.linalg.norm(v[:, 2:5], axis=1, keepdims=True), v[:, 2:5], rtol=1e-5, atol=1e-6)
    assert whole.instance_part(v) is v and replace(whole, instance_dims=(0, 6)).instance_part(v) is v
    for bad in ((0, 0), (3, 2), (0, 7), (-1, 3)):
        with pytest.raises(ValueError, match="instance_dims"):
            replace(whole, instance_dims=bad)
