"""What every indexing engine shares: decoding one photo file, and the result it hands the writer.

An engine turns a run's list of files into batches of `Embedded`: the local engine with decode
worker processes and this process's model (indexing.py), the Ray engine on a cluster
(ray_engine.py). The writer (IndexRun) stores the batches whichever engine made them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from indexer.embedding.config import EmbeddingConfig
from indexer.errors import InvalidImageError
from indexer.files import PhotoFile, content_hash
from indexer.images import ImageInfo, crop_for_embedding, load_image, to_tensor


@dataclass
class Embedded:
    """One photo's outcome from an engine: its vector and what its row keeps, or why it failed."""

    i: int  # position in the run's list of files to embed
    vector: npt.NDArray[np.float32] | None
    info: ImageInfo | None
    digest: str
    failure: str | None = None
    latent: npt.NDArray[np.float16] | None = None  # the frame's latent (C, h, w), kept for re-ranking


EmbedEngine = Callable[[list[PhotoFile]], Iterator[list[Embedded]]]


@dataclass
class Decoded:
    """One photo read, hashed, decoded, EXIF-transposed and cropped, or the reason it could not be."""

    pixels: torch.Tensor | None  # (3, size, size) in [0, 1], or (3, H, W) for a whole frame
    info: ImageInfo | None
    digest: str
    failure: str | None


def decode_file(path: Path, config: EmbeddingConfig) -> Decoded:
    """Read, hash, decode and crop one photo file as `config` says (what an engine's workers do)."""
    try:
        image, info = load_image(path, *config.decode_options)
        pixels = to_tensor([crop_for_embedding(image, config.image_size, config.trims, frame_aspect=config.frame_aspect)])[0]
        return Decoded(pixels, info, content_hash(path), None)
    except InvalidImageError as exc:
        return Decoded(None, None, "", exc.reason)
    except OSError as exc:
        return Decoded(None, None, "", f"cannot read: {exc.strerror or exc}")
