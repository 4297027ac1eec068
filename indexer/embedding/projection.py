"""PCA whitening learned on a model's training images and shipped beside its weights.

Whitening decorrelates feature dimensions and evens out their variance, so that a few
high-variance directions (overall brightness, say) do not dominate Euclidean distance. One
projection is stored per pre-projection embedding config, keyed by that config's fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

FOLDER = "projections"


@dataclass(frozen=True)
class Projection:
    """x -> (x - mean) @ matrix, then L2 normalisation by the caller."""

    key: str  # fingerprint of the embedding config (projection off) it was fitted for
    mean: npt.NDArray[np.float32]  # (d_in,)
    matrix: npt.NDArray[np.float32]  # (d_in, d_out)
    # The output dims [start, stop) trained to tell one photo from another whatever its edits (a
    # contrastive head) where the others describe what it shows (whitening, a class-discriminant
    # part): dedup compares photos on these alone, since different photos of one class are near in
    # the others. None: every dim.
    instance_dims: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.instance_dims is not None:
            start, stop = self.instance_dims
            if not 0 <= start < stop <= self.dim:
                raise ValueError(f"instance_dims must be a span [start, stop) inside 0..{self.dim}, got {self.instance_dims}")

    @property
    def digest(self) -> str:
        """Identifies the numbers, not just the config they were fitted for."""
        return hashlib.sha256(self.mean.tobytes() + self.matrix.tobytes()).hexdigest()[:16]

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return ((x - self.mean) @ self.matrix).astype(np.float32)

    def instance_part(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Finished (unit) vectors -> their instance dims, L2-normalised again (all of them when None)."""
        if self.instance_dims is None or self.instance_dims == (0, self.dim):
            return vectors
        return normalise(np.asarray(vectors, dtype=np.float32)[:, slice(*self.instance_dims)])

    @classmethod
    def load(cls, path: Path) -> Projection:
        """One stored projection file; its key is the file's stem."""
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            span = (handle.metadata() or {}).get("instance_dims")  # "start:stop"
        instance = tuple(int(n) for n in span.split(":")) if span else None
        return cls(key=Path(path).stem, mean=tensors["mean"].numpy(), matrix=tensors["matrix"].numpy(),
                   instance_dims=instance)  # type: ignore[arg-type]  # fmt: skip

    def save(self, model_dir: Path) -> Path:
        folder = Path(model_dir) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.key}.safetensors"
        tensors = {"mean": torch.from_numpy(self.mean), "matrix": torch.from_numpy(self.matrix)}
        metadata = {"key": self.key} | ({"instance_dims": "%d:%d" % self.instance_dims} if self.instance_dims else {})
        save_file(tensors, str(path), metadata=metadata)
        return path


def normalise(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise L2 normalisation (zero rows stay zero): what follows a projection."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def fit_projection(
    features: npt.NDArray[np.float32], key: str, dim: int = 256, shrinkage: float = 5.0
) -> Projection:
    """PCA-whitening to `dim` components: each component scaled by 1/sqrt(eigenvalue + shrinkage * mean eigenvalue).

    The shrinkage term keeps low-variance (noisy) directions from being blown up to the same
    weight as the strong ones; shrinkage=0 is plain whitening, a large value is plain PCA.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a (n >= 2, d) feature matrix, got shape {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    eigenvalues = singular**2 / (x.shape[0] - 1)
    dim = min(dim, vt.shape[0])
    reg = shrinkage * float(eigenvalues[:dim].mean())
    matrix = vt[:dim].T / np.sqrt(eigenvalues[:dim] + reg)
    return Projection(key=key, mean=np.ascontiguousarray(mean, np.float32), matrix=np.ascontiguousarray(matrix, np.float32))


def load_projections(model_dir: Path) -> dict[str, Projection]:
    """Every projection stored under `model_dir/projections/`, by key."""
    out: dict[str, Projection] = {}
    for path in sorted((Path(model_dir) / FOLDER).glob("*.safetensors")):
        projection = Projection.load(path)
        out[projection.key] = projection
    if out:
        log.debug("loaded %d projection(s) from %s", len(out), model_dir)
    return out

