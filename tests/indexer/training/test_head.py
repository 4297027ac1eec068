"""The contrastive projection head learns to ignore what changes between views of one photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.embedding.embedder import normalise
from indexer.embedding.projection import fit_projection, load_projections
from indexer.training.head import HeadConfig, fit_contrastive_projection, supcon_loss


def edited_views(n: int, views: int, seed: int) -> np.ndarray:
    """Photos with 16 dims of identity and 48 of per-view "edit" noise that is twice as strong."""
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=(n, 1, 16)).repeat(views, axis=1)
    edit = 2.0 * rng.normal(size=(n, views, 48))
    mixing = np.linalg.qr(rng.normal(size=(64, 64)))[0]  # the two are mixed in every coordinate
    return (np.concatenate([identity, edit], axis=2) @ mixing).astype(np.float32)


def view_recall(vectors: np.ndarray) -> float:
    """How often view 1 of a photo is nearest to view 0 of the same photo, among all photos' view 0."""
    a, b = normalise(vectors[:, 0]), normalise(vectors[:, 1])
    return float((np.argmax(b @ a.T, axis=1) == np.arange(len(a))).mean())


def test_head_finds_the_identity_that_pca_whitening_misses() -> None:
    # The dims must mix with a fixed rotation for train and test alike: build both from one draw.
    both = edited_views(1400, 3, seed=0)
    train, test = both[:1000], both[1000:]
    pca = fit_projection(train[:, 0], key="k", dim=16)
    head = fit_contrastive_projection(train, key="k", cfg=HeadConfig(dim=16, steps=300, batch=256))
    pca_recall = view_recall(np.stack([pca.apply(test[:, v]) for v in range(3)], axis=1))
    head_recall = view_recall(np.stack([head.apply(test[:, v]) for v in range(3)], axis=1))
    assert head_recall > 0.9, head_recall
    assert head_recall > pca_recall + 0.3, (pca_recall, head_recall)
    assert head.key == "k" and head.dim == 16 and head.matrix.dtype == np.float32


def test_head_saves_as_a_projection(tmp_path) -> None:  # noqa: ANN001
    head = fit_contrastive_projection(edited_views(64, 2, seed=1), key="cfg", cfg=HeadConfig(dim=8, steps=5, batch=32))
    head.save(tmp_path)
    loaded = load_projections(tmp_path)["cfg"]
    assert np.array_equal(loaded.matrix, head.matrix) and loaded.digest == head.digest


def test_supcon_loss_prefers_views_together() -> None:
    ids = torch.arange(4).repeat_interleave(2)
    together = torch.nn.functional.normalize(torch.eye(4).repeat_interleave(2, dim=0), dim=1)
    shuffled = together[torch.tensor([0, 2, 1, 3, 4, 6, 5, 7])]
    assert supcon_loss(together, ids, 0.1) < supcon_loss(shuffled, ids, 0.1)


def test_head_needs_two_views() -> None:
    with pytest.raises(ValueError, match="two views"):
        fit_contrastive_projection(np.zeros((10, 1, 4), np.float32), key="k")


def test_kept_whitening_sits_beside_the_learned_part() -> None:
    views = edited_views(300, 2, seed=2)
    head = fit_contrastive_projection(views, key="k", cfg=HeadConfig(dim=8, keep_whitening=4, steps=20, batch=64))
    assert head.dim == 12
    whitening = fit_projection(views[:, 0], key="k", dim=4).matrix
    ratio = head.matrix[:, :4] / whitening  # the kept part is the whitening, rescaled as one block
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-4)
    lengths = [np.median(np.linalg.norm((views[:, 0] - head.mean) @ part, axis=1)) for part in np.split(head.matrix, [4], axis=1)]
    assert np.allclose(lengths, 1.0, rtol=1e-3)


def test_view_features_are_cached_per_view_recipe(tmp_path, default_model) -> None:  # noqa: ANN001
    from indexer.embedding.config import EmbeddingConfig
    from indexer.training.head import cached_view_features

    config = EmbeddingConfig(image_size=64)
    rng = np.random.default_rng(0)
    plain, zoom = (rng.normal(size=(2, 2, 32, 8, 8)).astype(np.float16) for _ in range(2))
    a = cached_view_features(default_model, config, plain, tmp_path)
    b = cached_view_features(default_model, config, zoom, tmp_path, recipe="zoom")
    assert len(list(tmp_path.glob("view-features-*.npy"))) == 2  # same shape, other recipe: its own file
    assert a.shape == b.shape and not np.allclose(a, b)
    again = cached_view_features(default_model, config, zoom * 0, tmp_path, recipe="zoom")  # read back, not recomputed
    np.testing.assert_allclose(again, b, rtol=1e-2, atol=1e-2)
