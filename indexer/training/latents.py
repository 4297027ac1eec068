"""Encode a photo collection once to TAEF2 latents (each photo and its mirror image), cached on disk."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from indexer.errors import InvalidImageError
from indexer.images import prepare
from indexer.embedding.precision import bf16_autocast
from indexer.embedding.taef2 import load_encoder
from indexer.training.views import recipe_suffix
from indexer.workers import forked_cleanly

log = logging.getLogger(__name__)


class _Photos(Dataset):
    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            return prepare(self.paths[i], self.size), True
        except InvalidImageError as exc:
            log.warning("skipping %s", exc)
            return torch.zeros(3, self.size, self.size), False


def cache_key(paths: Sequence[Path], size: int) -> str:
    digest = hashlib.sha256(f"{size}\n".encode())
    for path in paths:
        digest.update(f"{path}\n".encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_photos(
    paths: Sequence[Path], autoencoder_dir: Path, size: int, cache_dir: Path, batch_size: int = 32, workers: int = 2
) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.bool_]]:
    """Raw latents (2m, 32, size/8, size/8) as float16 and which of the n paths they hold (m of them kept).

    Rows [0, m) are the readable photos in order, [m, 2m) their mirror images; unreadable ones are skipped.
    """
    cache = Path(cache_dir) / f"latents-{cache_key(paths, size)}.npy"
    kept_file = cache.with_suffix(".kept.npy")
    if cache.is_file() and kept_file.is_file():
        log.info("using cached latents %s", cache)
        return np.load(cache), np.load(kept_file)
    encoder = load_encoder(autoencoder_dir)
    loader = DataLoader(_Photos(paths, size), batch_size=batch_size, num_workers=workers)
    plain, mirrored, kept = [], [], []
    for pixels, ok in tqdm(forked_cleanly(loader), desc="encoding photos", unit="batch"):
        kept.append(ok.numpy())
        pixels = pixels[ok]
        with bf16_autocast("cpu"):
            both = encoder(torch.cat([pixels, pixels.flip(3)])).float()
        plain.append(both[: len(pixels)].half().numpy())
        mirrored.append(both[len(pixels) :].half().numpy())
    latents, mask = np.concatenate(plain + mirrored), np.concatenate(kept)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(kept_file, mask)  # written first: the latents file is what marks the cache complete
    np.save(cache.with_suffix(".tmp.npy"), latents)
    cache.with_suffix(".tmp.npy").rename(cache)
    return latents, mask


def read_list(list_file: Path, root: Path | None = None) -> list[Path]:
    """Paths from a list file (one per line, relative to `root` or to the list's folder)."""
    base = Path(root) if root else Path(list_file).parent
    lines = Path(list_file).read_text().splitlines()
    return [base / line.strip() for line in lines if line.strip() and not line.startswith("#")]


class _Views(Dataset):
    """A photo's clean centre crop and `views` random edits of it (indexer.training.views), as pixels."""

    def __init__(self, paths: Sequence[Path], size: int, views: int, seed: int, recipe: str = "default") -> None:
        self.paths, self.size, self.views, self.seed, self.recipe = list(paths), size, views, seed, recipe

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        from indexer.images import crop_for_embedding, load_image, to_tensor
        from indexer.training.views import random_view

        rng = np.random.default_rng([self.seed, i])
        try:
            image, _ = load_image(self.paths[i])
        except InvalidImageError as exc:
            log.warning("skipping %s", exc)
            return torch.zeros(1 + self.views, 3, self.size, self.size), False
        crops = [crop_for_embedding(image, self.size)] + [crop_for_embedding(random_view(image, rng, self.recipe), self.size) for _ in range(self.views)]
        return to_tensor(crops), True


@torch.no_grad()
def encode_views(
    paths: Sequence[Path], autoencoder_dir: Path, size: int, views: int, cache_dir: Path, seed: int = 0,
    batch_size: int = 16, workers: int = 2, recipe: str = "default",
) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.bool_]]:
    """Raw latents (m, 1 + views, 32, size/8, size/8) as float16: [:, 0] the clean photo, [:, 1:] its
    edited views (indexer.training.views.VIEW_RECIPES[recipe]); and which of the n paths they hold.
    Cached on disk (resumable: written at the end)."""
    digest = cache_key(paths, size)
    cache = Path(cache_dir) / f"views-{digest}-{views}-{seed}{recipe_suffix(recipe)}.npy"
    kept_file = cache.with_suffix(".kept.npy")
    if cache.is_file() and kept_file.is_file():
        log.info("using cached views %s", cache)
        return np.load(cache, mmap_mode="r"), np.load(kept_file)
    encoder = load_encoder(autoencoder_dir).to(memory_format=torch.channels_last)
    loader = DataLoader(_Views(paths, size, views, seed, recipe), batch_size=batch_size, num_workers=workers, prefetch_factor=4 if workers else None)
    out, kept = [], []
    for pixels, ok in tqdm(forked_cleanly(loader), desc=f"encoding {len(paths)} photos x {1 + views} views", unit="batch"):
        kept.append(ok.numpy())
        pixels = pixels[ok]
        flat = pixels.reshape(-1, 3, size, size).contiguous(memory_format=torch.channels_last)
        with bf16_autocast("cpu"):
            latents = encoder(flat).float()
        out.append(latents.reshape(len(pixels), 1 + views, *latents.shape[1:]).half().numpy())
    latents, mask = np.concatenate(out), np.concatenate(kept)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(kept_file, mask)
    np.save(cache.with_suffix(".tmp.npy"), latents)
    cache.with_suffix(".tmp.npy").rename(cache)
    return latents, mask
