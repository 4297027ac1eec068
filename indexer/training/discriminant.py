"""A class-discriminant projection: Fisher's linear discriminant (LDA) on pooled features.

The training photos' folders name their classes (a Tiny ImageNet wnid, a Caltech class). LDA finds
the directions along which those classes' means spread most against the spread of photos within a
class:

    maximise  w' S_b w / w' S_w w,

S_b the between-class and S_w the within-class scatter. It is solved in a PCA-whitened space of
`whiten_dim` components (where S_w is well-conditioned enough to invert), with S_w shrunk towards a
multiple of the identity (`reg`, as a fraction of its mean eigenvalue) so that directions a few
photos happen to agree on are not trusted. The solution is closed-form: whitening by S_w^(-1/2),
then the leading eigenvectors of the whitened S_b. Each output direction has unit within-class
variance, so distances count how many within-class spreads apart two photos are.

Classes that never reach the fit (the held-out ones) can only profit through what the seen classes
share with them; the unseen-class benchmark measures exactly that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.embedding.projection import Projection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscriminantConfig:
    dim: int = 128  # discriminant directions kept (at most classes - 1)
    whiten_dim: int = 1024  # PCA components it is solved in
    reg: float = 0.1  # within-class scatter shrinkage, as a fraction of its mean eigenvalue

    def __post_init__(self) -> None:
        if self.dim < 1 or self.whiten_dim < 1 or self.reg < 0:
            raise ValueError(f"need dim >= 1, whiten_dim >= 1 and reg >= 0, got {self}")


def fit_discriminant_projection(
    features: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], key: str, cfg: DiscriminantConfig = DiscriminantConfig()
) -> Projection:
    """features (n, d) of photos with class labels (n,) -> the Projection onto their LDA directions."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes, y = np.unique(y, return_inverse=True)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need (n, d) features and n labels, got {x.shape} and {y.shape}")
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    dim = min(cfg.dim, len(classes) - 1)
    mean = x.mean(axis=0)
    centred = x - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    keep = min(cfg.whiten_dim, int((singular > singular[0] * 1e-6).sum()))
    whiten = vt[:keep].T / (singular[:keep] / np.sqrt(len(x) - 1))
    z = centred @ whiten
    means = np.stack([z[y == c].mean(axis=0) for c in range(len(classes))])
    within = np.cov((z - means[y]).T)
    within += cfg.reg * float(np.trace(within)) / keep * np.eye(keep)
    between = np.cov(means.T)
    root = np.linalg.inv(np.linalg.cholesky(within))  # root @ within @ root.T = I
    eigenvalues, vectors = np.linalg.eigh(root @ between @ root.T)
    order = np.argsort(eigenvalues)[::-1][:dim]
    matrix = whiten @ root.T @ vectors[:, order]
    log.info("discriminant projection: %d classes, %d photos, %d of %d PCA dims -> %d (leading ratio %.2f)",
             len(classes), len(x), keep, x.shape[1], dim, float(eigenvalues[order[0]]))  # fmt: skip
    return Projection(key=key, mean=np.ascontiguousarray(mean, np.float32), matrix=np.ascontiguousarray(matrix, np.float32))
