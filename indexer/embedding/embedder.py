"""Images -> L2-normalised float32 vectors: encode, DDIM-invert to t, one U-Net pass, pool, project."""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path
from functools import cached_property
from collections import defaultdict
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch
from diffusers import DDIMScheduler

from indexer.embedding.config import DECODE_SETTINGS, LATENT, LEGACY_DTYPES, PREDICTED_X0, EmbeddingConfig, RuntimeOptions
from indexer.errors import ConfigError
from indexer.embedding.features import pool
from indexer.embedding.precision import cpu_has_native_bf16, pick_device, pick_dtype
from indexer.images import ImageInput, crop_for_embedding, load_image, prepare, prepare_with_mirror, to_tensor, trim_borders
from indexer.embedding.inversion import invert
from indexer.embedding.model import DiffusionModel, load_model
from indexer.embedding.projection import Projection, normalise
from indexer.embedding.runtimes import OpenVinoRuntime, Runtime, TorchRuntime, pick_runtime
from indexer.threads import apply_thread_budget, thread_budget

log = logging.getLogger(__name__)

Embedding = npt.NDArray[np.float32]
Latent = npt.NDArray[np.float16]

# The query's centre square is matched against a photo's latent at these fractions of image_size
# (zooms 1, 0.75 and 0.5625, the last a 9:16 re-crop of a 3:2 photo): bench/spatial_rerank.py.
TEMPLATE_SCALES = (1.0, 0.75, 0.5625)
# Latents are kept for re-ranking only from an encoder that shrinks the image at least this much
# (a pixel-space model's "latent" is the photo itself: 8x8 times the bytes, no better to match).
MIN_KEPT_DOWNSCALE = 8


@dataclass(frozen=True)
class FrameEmbeddings:
    """What `Embedder.embed_frames` gives: each frame's vector, and its latent where the model keeps one."""

    vectors: Embedding  # (n, d), unit length
    latents: list[Latent | None]  # (C, h, w) float16 each: the whole frame's encoded latent


class Embedder:
    """Embeds images exactly as `config` says; the same image always gives the same vector."""

    def __init__(
        self,
        config: EmbeddingConfig | None = None,
        options: RuntimeOptions | None = None,
        model: DiffusionModel | None = None,
    ) -> None:
        self.config = config or EmbeddingConfig()
        self.options = options or RuntimeOptions()
        self.device = pick_device(self.options.device)
        self.dtype = pick_dtype(self.options.dtype, self.device)
        threads = thread_budget(self.options.threads)
        apply_thread_budget(threads)
        self.model = (model or load_model(self.config.model, self.options.allow_download)).to(self.device)
        self._check_config()
        self.runtime = self._make_runtime(threads)
        self.projection = self._find_projection()
        self._alphas_cumprod = DDIMScheduler.from_config(self.model.scheduler_config).alphas_cumprod
        self.stage_seconds: dict[str, float] = defaultdict(float)

    def _check_config(self) -> None:
        multiple = self.model.min_image_multiple if self.config.uses_unet else self.model.downscale
        if self.config.image_size % multiple:
            raise ConfigError(
                f"image_size must be a multiple of {multiple} for model {self.model.name!r}, got {self.config.image_size}"
            )
        if self.config.uses_unet and self.config.timestep >= self.model.num_train_timesteps:
            raise ConfigError(
                f"timestep must be < {self.model.num_train_timesteps} for this model, got {self.config.timestep}"
            )

    def _make_runtime(self, threads: int) -> Runtime:
        name = pick_runtime(self.options.runtime, self.model, self.device)
        if name == "openvino":
            cache = Path(self.options.cache_dir) if self.options.cache_dir else None
            # OpenVINO has no bf16 emulation: without native bf16 (or below a oneDNN ISA cap) its
            # bf16 kernels fail to build, so a forced bf16 runs as fp32 there.
            dtype = self.dtype if self.dtype != "bfloat16" or cpu_has_native_bf16() else "float32"
            return OpenVinoRuntime(self.model, self.config.blocks, dtype, threads, cache, fixed_batches=(1, self.options.batch_size))
        return TorchRuntime(self.model, self.config.blocks, self.dtype, self.device)

    def _find_projection(self) -> Projection | None:
        if not self.config.projection:
            return None
        base = self.config.replace(projection=False)
        keys = [base.fingerprint(self.model.fingerprint)]
        # Projections fitted before dtype left the config, before borders were trimmed (or trimmed
        # more than once), on the centre square alone, or with any of the decode settings off
        # (every JPEG or HEIC decoded in full, every photo read as sRGB) still serve.
        for candidate in (
            framed.replace(**trims)
            for n in range(len(DECODE_SETTINGS) + 1)
            for off in itertools.combinations(DECODE_SETTINGS, n)
            for decoded in (base.replace(**dict.fromkeys(off, False)),)
            for framed in (decoded, decoded.replace(frame_aspect=1.0))
            for trims in ({}, {"trim_repeat": False}, {"trim_borders": False, "trim_repeat": False})
        ):
            keys += [candidate.fingerprint(self.model.fingerprint, legacy_dtype=d) for d in (None, *LEGACY_DTYPES)]
        found = next((self.model.projections[k] for k in keys if k in self.model.projections), None)
        key = keys[0]
        if found is None:
            log.info("model %r ships no projection for this config (%s); using raw features", self.model.name, key)
        return found

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors: config + model weights + the projection actually used (not the dtype)."""
        return self.config.fingerprint(self._weights_id)

    @property
    def legacy_fingerprints(self) -> tuple[str, ...]:
        """The fingerprints an index of these vectors got when dtype was part of the config."""
        return tuple(self.config.fingerprint(self._weights_id, legacy_dtype=d) for d in LEGACY_DTYPES)

    def matches(self, fingerprint: str) -> bool:
        return fingerprint == self.fingerprint or fingerprint in self.legacy_fingerprints

    @property
    def _weights_id(self) -> str:
        extra = self.projection.digest if self.projection is not None else "none"
        return f"{self.model.fingerprint}/{extra}"

    @cached_property
    def dim(self) -> int:
        """Vector length (one dummy forward pass, once, when there is no projection to read it from)."""
        if self.projection is not None:
            return self.projection.dim
        return int(self.embed_pixels(torch.zeros(1, 3, self.config.image_size, self.config.image_size)).shape[1])

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """Decode, EXIF-transpose and crop one image to (3, S, S), or its frame (3, S, W) or (3, H, S)
        when the config's frame_aspect allows one; raises InvalidImageError."""
        config = self.config
        return prepare(image, config.image_size, config.trims, config.frame_aspect, config.decode_options)

    def prepare_with_mirror(self, image: ImageInput) -> list[torch.Tensor]:
        """`prepare` of the image and of its left-right mirror, from one decode."""
        config = self.config
        return prepare_with_mirror(image, config.image_size, config.trims, config.frame_aspect, config.decode_options)

    def embed(self, images: Sequence[ImageInput]) -> Embedding:
        """(n, d) float32 unit vectors for `images`; the first unreadable one raises InvalidImageError."""
        started = time.perf_counter()
        pixels = [self.prepare(image) for image in images]
        self.stage_seconds["decode"] += time.perf_counter() - started
        return self.embed_frames(pixels).vectors

    @property
    def keeps_latents(self) -> bool:
        """Does this model give latents worth keeping for re-ranking (see MIN_KEPT_DOWNSCALE)?"""
        return self.model.downscale >= MIN_KEPT_DOWNSCALE

    @torch.no_grad()
    def embed_frames(self, frames: Sequence[torch.Tensor]) -> FrameEmbeddings:
        """Prepared images of any shapes (squares, or whole frames) -> their vectors and latents.

        Frames of one shape are encoded together; each vector comes from the centre S x S window
        of its frame's latent, so a square and the frame around it give the same vector to float
        noise, and the U-Net always runs on one shape. A vector does not depend on the other frames."""
        if not frames:
            return FrameEmbeddings(np.zeros((0, self.dim), dtype=np.float32), [])
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, frame in enumerate(frames):
            by_shape[tuple(frame.shape)].append(i)
        x0: list[torch.Tensor] = [torch.empty(0)] * len(frames)
        for indices in by_shape.values():
            for i, latent in zip(indices, self.encode(torch.stack([frames[i] for i in indices])), strict=True):
                x0[i] = latent
        side = self.config.image_size // self.model.downscale
        vectors = self.finish(self.pooled_features(torch.stack([centre_window(x, side) for x in x0])))
        latents = [x.half().numpy() if self.keeps_latents else None for x in x0]
        return FrameEmbeddings(vectors, latents)

    def template_pixels(self, image: ImageInput) -> list[torch.Tensor]:
        """The query's centre square at each of TEMPLATE_SCALES below 1 (decoded once), to match
        against photos' latents (searcher.rerank). At scale 1 the template is the centre window of
        the query's own frame latent (`query_template`): no encoding of its own. Borders are
        trimmed once for every scale."""
        trimmed = trim_borders(load_image(image, *self.config.decode_options)[0], self.config.trims)
        sizes = [cells * self.model.downscale for cells in self._template_cells()]
        return [to_tensor([crop_for_embedding(trimmed, size, trim=0)])[0] for size in sizes]

    def query_template(self, frame_latent: Latent) -> torch.Tensor:
        """The scale-1 template: the centre image_size square of a query's frame latent."""
        return centre_window(torch.from_numpy(frame_latent.astype(np.float32)), self.config.image_size // self.model.downscale)

    def latent_templates(self, frame_latent: Latent) -> list[torch.Tensor]:
        """A photo's templates from its kept frame latent alone, no file read and nothing encoded:
        the scale-1 template and it shrunk (bilinear, antialiased) to each smaller scale's side.
        Close to encoding the photo at those zooms (`template_pixels`): on Caltech test as searched,
        edited copies found first 0.985 against 0.984, class P@1 0.730 against 0.742
        (runs/light/template_source.py, 2026-11-29). Dedup uses them: it verifies every pair
        without the photos' files, 4.2x faster, and finds more (bench/results/dedup.md)."""
        centre = self.query_template(frame_latent)
        return [centre, *(torch.nn.functional.interpolate(centre[None], size=(c, c), mode="bilinear", antialias=True)[0] for c in self._template_cells())]

    def _template_cells(self) -> list[int]:
        """The side, in latent cells, of the template at each of TEMPLATE_SCALES below 1."""
        return [max(1, round(self.config.image_size * scale / self.model.downscale)) for scale in TEMPLATE_SCALES[1:]]

    @torch.no_grad()
    def encode_each(self, pixels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each prepared image (any shapes) -> its latent (C, h, w), float32."""
        return [self.encode(p[None])[0] for p in pixels]

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> Embedding:
        """(B, 3, S, S) in [0, 1] -> (B, d). Processes in runtime batches; results do not depend on them."""
        return self.finish(self.pooled_features(self.encode(pixels)))

    def _batched(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, pair_singles: bool = True
    ) -> torch.Tensor:
        """fn over runtime-sized chunks of x, concatenated. oneDNN takes another bf16 kernel path for
        a batch of one (~1e-3 off) while batches of two or more give bit-identical rows, so a lone
        item runs as a pair: a vector never depends on the batch it was computed in."""
        out = []
        for start in range(0, x.shape[0], self.options.batch_size):
            chunk = x[start : start + self.options.batch_size].to(self.device)
            if chunk.shape[0] == 1 and pair_singles:
                out.append(fn(chunk.expand(2, *chunk.shape[1:]))[:1])
            else:
                out.append(fn(chunk))
        return torch.cat(out)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> x0 in the U-Net's space (float32, on the CPU)."""
        clock = time.perf_counter()
        x0 = self._batched(self.runtime.encode, pixels, pair_singles=not self.runtime.encoder_batch_invariant)
        self._timed("encode", clock)
        return x0

    @torch.no_grad()
    def pooled_features(self, x0: torch.Tensor) -> Embedding:
        """x0 latents -> concatenated pooled features, before projection and final normalisation."""
        return self._batched(self._features, x0, pair_singles=not self.runtime.batch_invariant).numpy()

    def finish(self, raw: Embedding) -> Embedding:
        """Projection (when the model ships one for this config), then L2 normalisation."""
        if self.projection is not None:
            raw = self.projection.apply(raw)
        return normalise(raw)

    def _predicted_x0(self, xt: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """The clean latent the U-Net sees in x_t (DDIM eq. 12), for eps-, v- and sample-prediction models."""
        alpha = self._alphas_cumprod[self.config.timestep].to(xt.device)
        kind = self.model.scheduler_config.get("prediction_type", "epsilon")
        if kind == "sample":
            return model_output
        if kind == "v_prediction":
            return alpha.sqrt() * xt - (1 - alpha).sqrt() * model_output
        return (xt - (1 - alpha).sqrt() * model_output) / alpha.sqrt()

    def _predict_noise(self, sample: torch.Tensor, timestep: int) -> torch.Tensor:
        noise = self.runtime.unet(sample, timestep)[0]
        assert noise is not None
        return noise

    def _timed(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.stage_seconds[stage] += now - started
        return now

    def _features(self, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        clock = time.perf_counter()
        sources: dict[str, torch.Tensor] = {LATENT: x0} if LATENT in cfg.blocks else {}
        if cfg.uses_unet:
            with self.runtime.session():
                xt = invert(self.model, x0, cfg.timestep, cfg.inversion_steps, predict=self._predict_noise)
                clock = self._timed("inversion", clock)
                noise, captured = self.runtime.unet(xt, cfg.timestep, with_noise=PREDICTED_X0 in cfg.blocks)
            sources.update(captured)
            if noise is not None and PREDICTED_X0 in cfg.blocks:
                sources[PREDICTED_X0] = self._predicted_x0(xt.float(), noise)
        parts = []
        for name in cfg.blocks:
            weight = 1.0 if name == LATENT else cfg.unet_weight
            parts += [weight * p for p in pool(sources[name], cfg.grid, cfg.gap, cfg.power)]
        self._timed("features", clock)
        # Every part is unit length before weighting; `finish` normalises the concatenation.
        return torch.cat(parts, dim=1).cpu() / math.sqrt(len(parts))


def centre_window(latent: torch.Tensor, side: int) -> torch.Tensor:
    """The centre side x side cells of a (C, h, w) latent (all of it when it is that size)."""
    top, left = (latent.shape[1] - side) // 2, (latent.shape[2] - side) // 2
    return latent[:, top : top + side, left : left + side]
