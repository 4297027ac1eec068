"""A contrastive projection head: the linear map from pooled features to the searched vector, learned
so that edited copies of one photo land together and apart from other photos.

It replaces PCA-whitening as the model's bundled projection (same file format, same
`Projection.apply`), starting from the whitening and then trained with a multi-positive InfoNCE
(SupCon's loss with the photo as the label; SimCLR's NT-Xent when there are two views) on the
pooled features of several edited views per photo (indexer.training.views). The features are
computed once with the U-Net frozen (`view_features`), so training the head is cheap on a CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.embedding.model import DiffusionModel
from indexer.embedding.projection import Projection, fit_projection
from indexer.errors import ConfigError
from indexer.training.views import recipe_suffix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadConfig:
    dim: int = 256  # the learned part's output
    # Output dims of the starting PCA-whitening kept beside the learned part (0: none). Edit
    # invariance alone costs class-level retrieval (Caltech test P@10 0.522 -> 0.478, measured); the
    # kept whitening holds it (0.512) while near-duplicate recall@1 still rises (0.926 -> 0.951).
    keep_whitening: int = 0
    learned_weight: float = 1.0  # the learned part's length against the kept whitening's (both ~1 before)
    steps: int = 1000
    batch: int = 512  # photos per step (all their views)
    temperature: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.0
    shrinkage: float = 5.0  # of the PCA-whitening the head starts from
    seed: int = 0


def view_features(
    model: DiffusionModel, config: EmbeddingConfig, views: npt.NDArray[np.float16], chunk: int = 512,
    options: RuntimeOptions | None = None,
) -> npt.NDArray[np.float32]:
    """Raw autoencoder latents of views (n, V, C, h, w) -> pooled features (n, V, d), projection off."""
    if model.normalise is None:
        raise ConfigError(f"model {model.name!r} does not work on autoencoder latents")
    embedder = Embedder(config.replace(projection=False), options or RuntimeOptions(device="cpu", batch_size=64), model=model)
    n, v = views.shape[:2]
    out: npt.NDArray[np.float32] | None = None
    for start in tqdm(range(0, n, chunk), desc="view features", unit="chunk"):
        raw = torch.from_numpy(np.asarray(views[start : start + chunk], dtype=np.float32)).flatten(0, 1)
        feats = embedder.pooled_features(model.normalise(raw))
        if out is None:
            out = np.empty((n, v, feats.shape[1]), dtype=np.float32)
        out[start : start + chunk] = feats.reshape(-1, v, feats.shape[1])
    assert out is not None
    return out


def cached_view_features(
    model: DiffusionModel, config: EmbeddingConfig, views: npt.NDArray[np.float16], cache_dir: Path, recipe: str = "default",
) -> npt.NDArray[np.float32]:
    """`view_features`, kept in `cache_dir` under the config's and model's fingerprint, the views' shape
    and the view recipe they were made with (indexer.training.views.VIEW_RECIPES)."""
    key = f"{config.replace(projection=False).fingerprint(model.fingerprint)}-{'x'.join(map(str, views.shape[:2]))}{recipe_suffix(recipe)}"
    cache = Path(cache_dir) / f"view-features-{key}.npy"
    if cache.is_file():
        return np.load(cache).astype(np.float32)
    features = view_features(model, config, views)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache.with_suffix(".tmp.npy"), features.astype(np.float16))
    cache.with_suffix(".tmp.npy").rename(cache)
    return features


def supcon_loss(z: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-positive InfoNCE: each row against every other row, its positives the rows of the same id."""
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, -1e9)
    positives = (ids[:, None] == ids[None, :]) & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(log_prob * positives).sum(1).div(positives.sum(1).clamp(min=1)).mean()


def fit_contrastive_projection(features: npt.NDArray[np.float32], key: str, cfg: HeadConfig = HeadConfig()) -> Projection:
    """features (n photos, V >= 2 views, d) -> a Projection trained so views of a photo are nearest."""
    n, v, d = features.shape
    if v < 2:
        raise ValueError(f"need at least two views per photo, got {v}")
    start = fit_projection(features[:, 0], key=key, dim=cfg.dim, shrinkage=cfg.shrinkage)
    mean = torch.from_numpy(start.mean)
    matrix = torch.nn.Parameter(torch.from_numpy(start.matrix.copy()))
    opt = torch.optim.AdamW([matrix], lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = torch.from_numpy(np.asarray(features, dtype=np.float32))
    batch = min(cfg.batch, n)
    ids = torch.arange(batch).repeat_interleave(v)
    bar = tqdm(range(cfg.steps), desc="training projection head", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        photos = torch.randperm(n, generator=gen)[:batch]
        x = data[photos].reshape(-1, d) - mean
        z = F.normalize(x @ matrix, dim=1)
        loss = supcon_loss(z, ids, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    log.info("projection head: final loss %.4f after %d steps", loss.item(), cfg.steps)
    learned = Projection(key=key, mean=start.mean, matrix=matrix.detach().numpy())
    if not cfg.keep_whitening:
        return learned
    if cfg.keep_whitening == cfg.dim:  # the head's starting point itself (it was copied, not trained)
        kept = start
    else:  # the shrinkage term depends on dim, so another dim is another fit
        kept = fit_projection(features[:, 0], key=key, dim=cfg.keep_whitening, shrinkage=cfg.shrinkage)
    return stack_projections([(kept, 1.0), (learned, cfg.learned_weight)], features[: min(n, 2000), 0], key)


def stack_projections(parts: Sequence[tuple[Projection, float]], sample: npt.NDArray[np.float32], key: str) -> Projection:
    """Projections of the same features side by side, each scaled so that a typical photo of `sample`
    projects to length `weight` in it: the parts' say in a distance is set by the weights alone."""
    mean = parts[0][0].mean
    if any(not np.allclose(p.mean, mean, atol=1e-4) for p, _ in parts):
        raise ValueError("stacked projections must centre the same features (equal means)")
    x = np.asarray(sample, dtype=np.float32) - mean
    matrices = [weight * p.matrix / float(np.median(np.linalg.norm(x @ p.matrix, axis=1))) for p, weight in parts]
    return Projection(key=key, mean=mean, matrix=np.ascontiguousarray(np.concatenate(matrices, axis=1), np.float32))
