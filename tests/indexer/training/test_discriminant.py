"""The discriminant projection learns which directions separate classes, and that carries to new classes."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.embedding.embedder import normalise
from indexer.embedding.projection import fit_projection
from indexer.training.discriminant import DiscriminantConfig, fit_discriminant_projection
from indexer.training.head import stack_projections


def photos(classes: int, per_class: int, rng: np.random.Generator, mixing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class identity in 8 dims; 56 dims of within-class variation three times as strong; all mixed."""
    centres = rng.normal(size=(classes, 8))
    labels = np.repeat(np.arange(classes), per_class)
    x = np.concatenate([centres[labels] + 0.3 * rng.normal(size=(len(labels), 8)), 3.0 * rng.normal(size=(len(labels), 56))], axis=1)
    return (x @ mixing).astype(np.float32), labels


def precision_at_1(vectors: np.ndarray, labels: np.ndarray) -> float:
    v = normalise(vectors)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    return float((labels[np.argmax(sims, axis=1)] == labels).mean())


def test_lda_directions_carry_to_classes_it_never_saw() -> None:
    rng = np.random.default_rng(0)
    mixing = np.linalg.qr(rng.normal(size=(64, 64)))[0]
    train_x, train_y = photos(40, 30, rng, mixing)
    test_x, test_y = photos(15, 20, rng, mixing)  # new centres: classes the fit never saw
    lda = fit_discriminant_projection(train_x, train_y, key="k", cfg=DiscriminantConfig(dim=8, whiten_dim=64, reg=0.01))
    pca = fit_projection(train_x, key="k", dim=8)
    unseen_lda, unseen_pca = precision_at_1(lda.apply(test_x), test_y), precision_at_1(pca.apply(test_x), test_y)
    assert unseen_lda > 0.9, unseen_lda
    assert unseen_lda > unseen_pca + 0.3, (unseen_pca, unseen_lda)
    assert lda.key == "k" and lda.dim == 8 and lda.matrix.dtype == np.float32


def test_lda_keeps_at_most_classes_minus_one_directions_and_refuses_bad_input() -> None:
    rng = np.random.default_rng(1)
    x, y = photos(5, 10, rng, np.eye(64))
    assert fit_discriminant_projection(x, y, key="k", cfg=DiscriminantConfig(dim=32, whiten_dim=64)).dim == 4
    with pytest.raises(ValueError, match="two classes"):
        fit_discriminant_projection(x, np.zeros(len(x), dtype=np.int64), key="k")
    with pytest.raises(ValueError, match="labels"):
        fit_discriminant_projection(x, y[:-1], key="k")
    with pytest.raises(ValueError):
        DiscriminantConfig(reg=-1)


def test_stacked_projections_get_the_say_their_weights_give() -> None:
    rng = np.random.default_rng(2)
    x, y = photos(10, 20, rng, np.eye(64))
    whitening, lda = fit_projection(x, key="k", dim=16), fit_discriminant_projection(x, y, key="k", cfg=DiscriminantConfig(dim=8, whiten_dim=64))
    both = stack_projections([(whitening, 1.0), (lda, 0.5)], x, key="both")
    assert both.key == "both" and both.dim == 24
    out = both.apply(x)
    assert np.median(np.linalg.norm(out[:, :16], axis=1)) == pytest.approx(1.0, rel=1e-4)
    assert np.median(np.linalg.norm(out[:, 16:], axis=1)) == pytest.approx(0.5, rel=1e-4)
    other = fit_projection(x + 1.0, key="k", dim=16)
    with pytest.raises(ValueError, match="equal means"):
        stack_projections([(whitening, 1.0), (other, 1.0)], x, key="k")
