"""Class-level retrieval quality (P@1, P@10, mAP, recall@k) of embedding variants, baselines included.

Every labelled photo queries all the others by Euclidean distance. Photos are decoded and
encoded once per image size (cached on disk); each variant then only runs its U-Net and pooling,
so an ablation of many variants costs little more than one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import PIL
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder, normalise
from indexer.errors import ConfigError, InvalidImageError
from indexer.images import MAX_TRIMS, PHOTO_NAMES, Decode, crop_for_embedding, load_image, to_tensor
from indexer.embedding.model import DiffusionModel
from indexer.embedding.projection import fit_projection
from indexer.training.train import TrainConfig, build_unet
from indexer.workers import forked_cleanly

log = logging.getLogger(__name__)

BASELINE = "latent only, same pipeline (no U-Net)"
DEFAULT_ROW = "trained U-Net, chosen config (default)"
AS_INDEXED_ROW = "default as indexed (bundled projection)"
LATENT_GRID_ROW = "latent only, 4x4 grid, no global mean (its best pooling)"


@dataclass(frozen=True)
class LabelledSet:
    paths: list[Path]
    labels: npt.NDArray[np.int64]
    classes: list[str]

    @classmethod
    def from_list(cls, list_file: Path, root: Path, skip: Sequence[str] = ("BACKGROUND_Google",)) -> LabelledSet:
        """A list file of 'class/name.jpg' lines relative to `root` (folder = class)."""
        lines = [ln.strip() for ln in Path(list_file).read_text().splitlines() if ln.strip()]
        return cls.from_lines([ln for ln in lines if ln.split("/")[0] not in skip], root)

    @classmethod
    def from_lines(cls, lines: Sequence[str], root: Path) -> LabelledSet:
        """'class/name.jpg' entries relative to `root`; the first folder is the class."""
        return cls._build([Path(root) / ln for ln in lines], [ln.split("/")[0] for ln in lines])

    @classmethod
    def from_tree(cls, root: Path, skip: Sequence[str] = ("BACKGROUND_Google",)) -> LabelledSet:
        """Every photo under `root`, labelled by its top-level folder."""
        from indexer.files import walk_photos

        # Evaluation only reads, so links are followed (a tree of symlinked photos is a common way
        # to lay out a labelled set); `diffsearch index` follows them only with --follow-symlinks.
        base = Path(root).expanduser().absolute()
        paths = [p.path for p in walk_photos([base], follow_symlinks=True) if p.path.relative_to(base).parts[0] not in skip]
        if not paths:
            raise ConfigError(f"no photos under {base}: expected one folder per class holding photos ({PHOTO_NAMES})")
        return cls._build(paths, [p.relative_to(base).parts[0] for p in paths])

    @classmethod
    def _build(cls, paths: list[Path], names: list[str]) -> LabelledSet:
        if not paths:
            raise ConfigError("the labelled set is empty: no photos to evaluate")
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        return cls(paths, np.array([index[n] for n in names], dtype=np.int64), classes)


def with_mirror(dist: npt.NDArray[np.float32], by_mirror: npt.NDArray[np.float32], within: float) -> npt.NDArray[np.float32]:
    """Query-by-photo distances as `Searcher.query` ranks them: a photo the query's mirror finds
    within `within` (in the units of the distances) at the nearer of its two distances."""
    return np.where(by_mirror <= within, np.minimum(dist, by_mirror), dist)


def retrieval_metrics(
    vectors: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    ks: Sequence[int] = (1, 10),
    mirrored: npt.NDArray[np.float32] | None = None,
    mirror_within: float = np.inf,
) -> dict[str, float]:
    """Mean over queries of precision@k, recall@k (a hit in the top k) and average precision.

    `mirrored`: each query's left-right mirror's vector; a photo the mirror finds within
    `mirror_within` then ranks at the nearer of its two distances, as `Searcher.query` searches."""
    x = np.asarray(vectors, dtype=np.float32)
    sq = (x * x).sum(1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    if mirrored is not None:
        m = np.asarray(mirrored, dtype=np.float32)
        by_mirror = (m * m).sum(1)[:, None] + sq[None, :] - 2.0 * (m @ x.T)  # squared, as `dist`
        dist = with_mirror(dist, by_mirror, mirror_within**2)
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :-1]  # the query itself sorts last
    relevant = labels[order] == labels[:, None]
    out: dict[str, float] = {}
    for k in ks:
        out[f"P@{k}"] = float(relevant[:, :k].mean())
        out[f"R@{k}"] = float(relevant[:, :k].any(axis=1).mean())
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    n_rel = relevant.sum(axis=1)
    ap = np.where(n_rel > 0, (relevant * hits / ranks).sum(axis=1) / np.maximum(n_rel, 1), 0.0)
    out["mAP"] = float(ap.mean())
    return out


def colour_histogram(pixels: torch.Tensor, bins: int = 8) -> npt.NDArray[np.float32]:
    """bins^3 joint RGB histogram per image, L2-normalised (the classic baseline)."""
    q = (pixels.clamp(0, 1) * (bins - 1e-6)).long()
    codes = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = torch.stack([torch.bincount(c.flatten(), minlength=bins**3) for c in codes]).float()
    return normalise(hist.numpy())


class _Crops(Dataset):
    def __init__(self, paths: Sequence[Path], size: int, trim: int = MAX_TRIMS, mirror: bool = False, decode: Decode = Decode()) -> None:
        self.paths, self.size, self.trim, self.mirror, self.decode = list(paths), size, trim, mirror, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            image = load_image(self.paths[i], *self.decode)[0]
            return to_tensor([crop_for_embedding(image, self.size, self.trim, self.mirror)])[0]
        except InvalidImageError as exc:
            log.warning("evaluating a grey square for %s", exc)
            return torch.full((3, self.size, self.size), 0.5)


@dataclass
class EncodedSet:
    """x0 latents (the U-Net's space) and colour histograms of one photo set at one image size."""

    x0: torch.Tensor
    histograms: npt.NDArray[np.float32]


def encode_probe(embedder: Embedder, size: int) -> str:
    """A digest of the latent `embedder` makes of a fixed synthetic photo (cropped as every photo is,
    JPEG-compressed so the decoder is in the path too): it changes with anything that changes latents."""
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(smooth).resize((3 * size // 2, size + 7), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    pixels = to_tensor([crop_for_embedding(load_image(buffer.getvalue())[0], size)])
    return hashlib.sha256(embedder.encode(pixels).numpy().tobytes()).hexdigest()[:16] + f"|PIL {PIL.__version__}"


def encode_set(
    model: DiffusionModel,
    paths: Sequence[Path],
    size: int,
    cache_dir: Path | None,
    workers: int = 2,
    trim: int = MAX_TRIMS,
    mirror: bool = False,
    decode: Decode = Decode(),
) -> EncodedSet:
    """The photos' x0 latents and colour histograms (of their left-right mirrors with `mirror`),
    each photo decoded as `decode` says (`load_image`: reduced, from a HEIF's thumbnail, to sRGB)."""
    embedder = Embedder(EmbeddingConfig(image_size=size, blocks=("latent",), projection=False), RuntimeOptions(device="cpu"), model=model)
    # Resolved paths: a relative and an absolute --root (or a link to it) share one cache entry.
    # The key also holds what today's encode path makes of a probe image: bench/near_duplicates.py
    # compares cached gallery latents with queries encoded fresh, and a gallery cached by an earlier
    # encode path (other code, libraries or runtime) is the likely reason the shipped default read
    # recall@1 0.931 there where a run from an empty cache gives 0.953 (2026-11-28; the last
    # release's row, encoded afresh both times, reproduced: 0.928 then, 0.929 now).
    resolved = "|".join(str(Path(p).resolve()) for p in paths)
    mirrored = "|mirror" if mirror else ""
    mirrored += f"|decode={decode.min_side}" if decode.min_side else ""
    mirrored += f"|thumbnail={decode.thumbnail_side}" if decode.thumbnail_side else ""
    mirrored += "" if decode.to_srgb else "|as-read"
    key = hashlib.sha256(f"{model.encoder_fingerprint}|{size}|trim={trim}{mirrored}|{encode_probe(embedder, size)}|{resolved}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"encoded-{key}.pt" if cache_dir else None
    if cache and cache.is_file():
        data = torch.load(cache, weights_only=False)
        return EncodedSet(data["x0"].float(), data["histograms"])
    x0s, hists = [], []
    loader = DataLoader(_Crops(paths, size, trim, mirror, decode), batch_size=32, num_workers=workers)
    for pixels in tqdm(forked_cleanly(loader), desc=f"encoding {len(paths)} {'mirrored ' if mirror else ''}photos at {size}px", unit="batch"):
        x0s.append(embedder.encode(pixels).half())
        hists.append(colour_histogram(pixels))
    out = EncodedSet(torch.cat(x0s).float(), np.concatenate(hists))
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x0": out.x0.half(), "histograms": out.histograms}, cache)
    return out


@dataclass
class Variant:
    """One row of the table: a model + config, or the colour histogram (model None)."""

    name: str
    config: EmbeddingConfig | None = None
    model: DiffusionModel | None = None
    whiten: bool = False  # fit PCA-whitening on the fit set (same images for every variant)
    whiten_dim: int = 256
    whiten_shrinkage: float = 5.0  # measured on val: 0.1 (near-plain whitening) hurt P@10 and mAP
    as_indexed: bool = False  # the Embedder exactly as `index` runs it: the model's bundled projection, no refit
    # Queries also search as their left-right mirror, counting what it finds within this distance
    # (`Searcher.query` with searcher.searcher.MIRROR_MAX_DISTANCE); None: no mirror.
    mirror_within: float | None = None
    note: str = ""


@dataclass
class EvalResult:
    name: str
    metrics: dict[str, float]
    dim: int
    note: str = ""
    extra: dict = field(default_factory=dict)


def variant_vectors(
    variant: Variant, evaluated: EncodedSet, fit: EncodedSet | None, batch_size: int = 64
) -> npt.NDArray[np.float32]:
    if variant.model is None or variant.config is None:
        return evaluated.histograms
    if variant.as_indexed:
        embedder = Embedder(variant.config, RuntimeOptions(device="cpu", batch_size=batch_size), model=variant.model)
        return embedder.finish(embedder.pooled_features(evaluated.x0))
    embedder = Embedder(variant.config.replace(projection=False), RuntimeOptions(device="cpu", batch_size=batch_size), model=variant.model)
    raw = embedder.pooled_features(evaluated.x0)
    if variant.whiten:
        if fit is None:
            raise ValueError(f"variant {variant.name!r} whitens but no fit set was given")
        projection = fit_projection(
            embedder.pooled_features(fit.x0), key="eval", dim=variant.whiten_dim, shrinkage=variant.whiten_shrinkage
        )
        raw = projection.apply(raw)
    return normalise(raw)


def evaluate(
    variants: Sequence[Variant],
    labelled: LabelledSet,
    fit_paths: Sequence[Path] | None = None,
    cache_dir: Path | None = None,
    workers: int = 2,
) -> list[EvalResult]:
    """Every variant on `labelled`, encoding each (image size, encoder) once."""
    encoded: dict[tuple, EncodedSet] = {}  # (encoder, size, trim, decode[, 'mirror'])
    fitted: dict[tuple, EncodedSet] = {}
    results = []
    for variant in variants:
        model = variant.model or next(v.model for v in variants if v.model is not None)
        config = variant.config or EmbeddingConfig()
        size, trim, decode = config.image_size, config.trims, config.decode_options
        key = (model.encoder_fingerprint, size, trim, decode)
        if key not in encoded:
            encoded[key] = encode_set(model, labelled.paths, size, cache_dir, workers, trim, decode=decode)
        if variant.whiten and key not in fitted and fit_paths:
            fitted[key] = encode_set(model, fit_paths, size, cache_dir, workers, trim, decode=decode)
        vectors = variant_vectors(variant, encoded[key], fitted.get(key))
        mirrored = None
        if variant.mirror_within is not None:
            if (*key, "mirror") not in encoded:
                encoded[*key, "mirror"] = encode_set(model, labelled.paths, size, cache_dir, workers, trim, mirror=True, decode=decode)
            mirrored = variant_vectors(variant, encoded[*key, "mirror"], fitted.get(key))
        within = np.inf if variant.mirror_within is None else variant.mirror_within
        metrics = retrieval_metrics(vectors, labelled.labels, mirrored=mirrored, mirror_within=within)
        log.info("%s: %s", variant.name, {k: round(v, 4) for k, v in metrics.items()})
        results.append(EvalResult(variant.name, metrics, int(vectors.shape[1]), variant.note))
    return results


def random_unet_model(trained: DiffusionModel) -> DiffusionModel:
    """The trained pipeline with its U-Net swapped for a randomly initialised one of the same shape."""
    torch.manual_seed(0)
    cfg = TrainConfig(block_out_channels=tuple(trained.unet.config.block_out_channels))
    unet = build_unet(cfg).eval().requires_grad_(False)
    # Its own fingerprint (weights differ per architecture) and its own compiled-graph memo: runtimes
    # cache graphs by fingerprint, and must never serve the trained U-Net's graph for this one.
    fingerprint = "random-init-" + hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=list).encode()).hexdigest()[:12]
    return dataclasses.replace(trained, unet=unet, fingerprint=fingerprint, projections={}, modules=[unet], compiled={})


def ablation(chosen: EmbeddingConfig, trained: DiffusionModel, with_256: bool, stage_one: DiffusionModel | None = None) -> list[Variant]:
    """The rows that show whether the diffusion features earn their place; the chosen config is the last."""
    unet_blocks = tuple(b for b in chosen.blocks if b != "latent") or ("mid",)
    if not chosen.uses_unet:
        chosen = chosen.replace(blocks=("latent",) + unet_blocks)
    same_pipeline = dict(whiten=chosen.projection)
    rows = [Variant("colour histogram 8x8x8", note="classic baseline")]
    if with_256:
        rows.append(Variant("TAEF2 latent 256px, 4x4 pooled (reference)", EmbeddingConfig(image_size=256, blocks=("latent",), grid=4, gap=False, projection=False), trained))
    latent_only = chosen.replace(blocks=("latent",))
    rows.append(Variant(BASELINE, latent_only, trained, **same_pipeline))
    best_latent = latent_only.replace(grid=4, gap=False)  # the latent's best pooling on val
    if best_latent != latent_only:
        rows.append(Variant(LATENT_GRID_ROW, best_latent, trained, **same_pipeline))
    rows.append(Variant("random-init U-Net, same pipeline", chosen, random_unet_model(trained), **same_pipeline))
    if stage_one is not None:
        rows.append(Variant("U-Net after diffusion-only training (stage 1), same pipeline", chosen, stage_one, **same_pipeline))
    if "latent" in chosen.blocks:
        rows.append(Variant("trained U-Net features only", chosen.replace(blocks=unet_blocks), trained, **same_pipeline))
    else:
        rows.append(Variant("trained U-Net + latent", chosen.replace(blocks=("latent",) + unet_blocks, unet_weight=1.0), trained, **same_pipeline))
    rows.append(Variant(DEFAULT_ROW, chosen, trained, **same_pipeline))
    if trained.projections:
        rows.append(Variant(AS_INDEXED_ROW, chosen.replace(projection=True), trained, as_indexed=True,
                            note="the vectors `diffsearch index` stores: bundled projection, not refitted"))  # fmt: skip
    return rows


def markdown_table(results: Sequence[EvalResult], baseline: str | None = None) -> str:
    keys = list(results[0].metrics) if results else []
    base = next((r for r in results if r.name == baseline), None)
    head = "| variant | dim | " + " | ".join(keys) + (" | P@10 vs baseline |" if base else " |")
    lines = [head, "|" + "---|" * (len(keys) + 2 + (1 if base else 0))]
    for r in results:
        cells = " | ".join(f"{r.metrics[k]:.3f}" for k in keys)
        ratio = f" | {r.metrics['P@10'] / base.metrics['P@10']:.2f}x" if base else ""
        lines.append(f"| {r.name} | {r.dim} | {cells}{ratio} |")
    return "\n".join(lines)
