"""The embedding settings: one frozen, typed config with a stable fingerprint.

Everything that changes the numbers in an embedding lives here; everything that only changes
how fast they are computed (batch size, device, workers) does not, so it is not in the
fingerprint and an index can be searched from another machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from indexer.errors import ConfigError
from indexer.images import MAX_TRIMS, Decode

Dtype = Literal["auto", "float32", "bfloat16"]
# Indexes written before dtype became a runtime option stored it in their config: their
# fingerprints are reproduced with it (see `fingerprint(legacy_dtype=...)`).
LEGACY_DTYPES = ("bfloat16", "float32")
Device = Literal["auto", "cpu", "cuda", "mps"]
RuntimeName = Literal["auto", "torch", "openvino"]  # what runs the model (indexer.embedding.runtimes)
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)

# Names of the feature sources a config can pool. "latent" is the encoded image itself (no
# U-Net); the rest are U-Net blocks, indexed from the input side.
LATENT = "latent"
PREDICTED_X0 = "x0"  # the U-Net's estimate of the clean latent at t (DDIM eq. 12's "predicted x0")
BLOCK_PREFIXES = ("down.", "mid", "up.")

DEFAULT_MODEL = "default"
# A reduced JPEG decode keeps the shorter side at least this many times image_size (`decode_side`).
DECODE_MARGIN = 3
# Failing one of DECODE_MARGIN x image_size, a HEIC/HEIF decodes from an embedded thumbnail whose
# shorter side is at least this many times image_size (`thumbnail_side`): 1.5 x 128 = 192, so an
# iPhone's 320 x 240 thumbnail qualifies.
THUMBNAIL_MARGIN = 1.5


# The settings that change how a photo's pixels are decoded (`EmbeddingConfig.decode_options`), not
# what is computed from them: the features' statistics are the same either way, so a projection
# fitted with any of them off serves a config with them on (`Embedder._find_projection`).
DECODE_SETTINGS = ("reduced_decode", "heif_thumbnails", "to_srgb")


# Settings added after indexes were first stored, each with what every index from before it did:
# such an index reads the setting back so (`EmbeddingConfig.from_stored`), and a config at that
# value keeps the fingerprint it had before the setting existed (`EmbeddingConfig.fingerprint`).
ADDED_LATER: dict[str, Any] = {
    "trim_borders": False,  # no trimming
    "frame_aspect": 1.0,  # the centre square
    "trim_repeat": False,  # one trim
    "reduced_decode": False,  # every JPEG decoded in full
    "heif_thumbnails": False,  # every HEIC decoded in full
    "to_srgb": False,  # pixels read as sRGB whatever the colour profile
}


@dataclass(frozen=True)
class EmbeddingConfig:
    """How an image becomes a vector. Saved beside every index; a mismatch on open is an error.

    The defaults were chosen on a validation split carved from Caltech-101's train photos
    (bench/quality.py --sweep; bench/results/sweep-val.json) for the bundled model.
    """

    model: str = DEFAULT_MODEL
    # Side of the square the image is resized and centre-cropped to (pixels). Must be a
    # multiple of the model's total downscale (8 for TAEF2 times 4 for the default U-Net).
    image_size: int = 128
    # Diffusion timestep the U-Net features are read at (0 <= t < num_train_timesteps).
    # Small t keeps the image; large t asks the U-Net to imagine more.
    # The bundled model's mid block hardly cares: t = 20..400 all give val P@10 0.5734-0.5736.
    timestep: int = 50
    # DDIM inversion steps from x0 to `timestep` (0: feed the clean latent at `timestep`). The
    # design is encode -> DDIM-invert -> read the U-Net, so the default runs one real inversion step
    # (one extra U-Net pass, ~10% of the time). bench/inversion_sweep.py on the validation split:
    # t in {20, 50, 100} x k in {0, 1, 2} all within 0.001 of each other (P@10 0.567, mAP 0.602,
    # near-duplicate recall@1 0.916-0.918); t=50, k=1 is the best row with inversion at one step.
    inversion_steps: int = 1
    # Feature sources, see LATENT and BLOCK_PREFIXES ("latent", "down.1", "mid", "up.0", ...).
    # The bundled model's projection was fitted on latent + mid block (bench/generalisation.py:
    # on 40 unseen Tiny ImageNet classes P@10 0.262 with both, 0.249 for the whitened pair alone
    # against 0.217 for the latent alone; the mid block alone is the last release's setting).
    blocks: tuple[str, ...] = ("latent", "mid")
    # Spatial grid pooled per source (g x g average cells), plus global mean when `gap`.
    grid: int = 4
    gap: bool = True
    # Weight of the U-Net's parts against the latent's in the concatenation (each part is unit
    # length before weighting, so 1.0 is an equal say per part; best of 0.25/0.5/1 for latent + mid).
    unet_weight: float = 1.0
    # Signed power applied to every activation before pooling: sign(x)|x|^power. Below 1 it damps
    # the few channels that dominate raw activations (a standard trick for pooled CNN features).
    power: float = 1.0
    # Apply the model's bundled PCA-whitening projection (if it ships one for this config).
    projection: bool = True
    # Trim flat bands at the edges (letterboxing, a screenshot's frame) before the centre crop, so
    # a framed copy meets its original (indexer.images.trim_border). Configs saved before this
    # setting existed did not trim, and read back so.
    trim_borders: bool = True
    # Trim again while a trim removes something (indexer.images.trim_borders): a frame around a
    # photo with flat margins of its own trims in two steps. bench/searched.py, Caltech val:
    # screenshot-framed copies found first 0.933 -> 0.997, overall 0.979 either way (other edits
    # within 0.013), class P@10 0.553 either way. Configs saved before this setting existed
    # trimmed once, and read back so.
    trim_repeat: bool = True
    # The frame encoded around the centre square, as its longest side over its shortest (the
    # longer side is cut to at most this times `image_size`; 1.0: the square alone). The vector
    # comes from the latent's centre window (within float noise of encoding the square alone),
    # and the whole latent is kept so a search can re-rank its short list by where the query sits
    # in each photo (searcher.rerank). bench/searched.py, Caltech val: re-framed copies found
    # first 0.907 at 1.25, 0.923 at 2.0 (0.747 without re-ranking), overall 0.983 and 0.985; the
    # encoder's work grows with the frame (1.25: 1.25x for most photos; 2.0: 1.5x for a 3:2 photo,
    # which took the default below the CLIP-sized encoder's speed). Configs saved before this
    # setting existed encoded the square, and read back so.
    frame_aspect: float = 1.25
    # Decode a JPEG at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4, 1/8) where its shorter
    # side stays at least DECODE_MARGIN x image_size (`decode_side`), the margin the resize keeps
    # before its last resampling anyway (reducing_gap 3). A 12-megapixel photo then decodes and
    # crops 2.9x faster with a tenth of the memory, and a folder of them indexes 1.55x faster
    # (bench/decode.py, 2-core AVX2 EPYC); its vector moves from a full decode's a little further
    # than halving the photo moves it (median 0.028 against 0.015). Photos under 768 px a side
    # (every Caltech test photo) decode in full either way.
    # Configs saved before this setting existed decoded in full, and read back so.
    reduced_decode: bool = True
    # Decode a HEIC/HEIF photo from a thumbnail embedded in it (iPhones write 320 or 512 px ones)
    # that is a scaled copy of it with a shorter side of at least `decode_side` (as a JPEG), else
    # at least THUMBNAIL_MARGIN x image_size (`thumbnail_side`), resampled to the photo's exact
    # aspect. A phone's 12-megapixel HEIC decodes in full in ~0.66 s on one core, four times what
    # the model spends on it: a folder of them indexes 4.3x faster this way, and the vectors move
    # from a full decode's median 0.109 with libheif-made (aliased) thumbnails, 0.037 with filtered
    # ones, a JPEG q80 re-save 0.031 (bench/decode.py --format heic, bench/results/decode.md).
    # Configs saved before this setting existed decoded in full, and read back so.
    heif_thumbnails: bool = True
    # Convert a photo tagged with another colour space's ICC profile (an iPhone's Display P3, a
    # camera's Adobe RGB, ProPhoto), or a HEIF/AVIF whose colour code points name Display P3
    # (indexer.colour.colour_profile), to sRGB before the model sees it (indexer.colour.convert_to_srgb):
    # read as sRGB, such a copy of a photo sat median 0.059 (P3) to 0.188 (ProPhoto) from the
    # sRGB photo; converted, 0.031 to 0.059 (bench/colour_profiles.py). Configs saved before this
    # setting existed read every photo's pixels as sRGB, and read back so.
    to_srgb: bool = True

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 8:
            raise ConfigError(f"image_size must be a positive multiple of 8, got {self.image_size}")
        if self.timestep < 0:
            raise ConfigError(f"timestep must be >= 0, got {self.timestep}")
        if self.inversion_steps < 0:
            raise ConfigError(f"inversion_steps must be >= 0, got {self.inversion_steps}")
        if self.inversion_steps and self.timestep % self.inversion_steps:
            raise ConfigError(
                f"timestep ({self.timestep}) must be a multiple of inversion_steps ({self.inversion_steps})"
            )
        if not self.blocks:
            raise ConfigError("blocks must name at least one feature source")
        for name in self.blocks:
            if name not in (LATENT, PREDICTED_X0) and not name.startswith(BLOCK_PREFIXES):
                raise ConfigError(f"unknown block {name!r}: use 'latent', 'x0', 'mid', 'down.N' or 'up.N'")
        if self.grid < 0 or (self.grid == 0 and not self.gap):
            raise ConfigError(f"grid must be >= 0 and grid=0 needs gap=True, got grid={self.grid}, gap={self.gap}")
        if self.unet_weight < 0:
            raise ConfigError(f"unet_weight must be >= 0, got {self.unet_weight}")
        if not 0 < self.power <= 2:
            raise ConfigError(f"power must be in (0, 2], got {self.power}")
        if not 1.0 <= self.frame_aspect <= 4.0:
            raise ConfigError(f"frame_aspect must be in [1, 4], got {self.frame_aspect}")

    @property
    def trims(self) -> int:
        """How many times in a row flat borders are trimmed (`indexer.images.trim_borders`)."""
        return 0 if not self.trim_borders else MAX_TRIMS if self.trim_repeat else 1

    @property
    def decode_side(self) -> int:
        """The shortest a JPEG's shorter side may be decoded at (`indexer.images.load_image`); 0: in full."""
        return DECODE_MARGIN * self.image_size if self.reduced_decode else 0

    @property
    def thumbnail_side(self) -> int:
        """The shortest an embedded HEIF thumbnail's shorter side may be to decode from it (`indexer.images.load_image`); 0: never."""
        return math.ceil(THUMBNAIL_MARGIN * self.image_size) if self.heif_thumbnails else 0

    @property
    def decode_options(self) -> Decode:
        """How `indexer.images.load_image` decodes a photo for these vectors: (`decode_side`,
        `thumbnail_side`, `to_srgb`), its arguments after the source."""
        return Decode(self.decode_side, self.thumbnail_side, self.to_srgb)

    @property
    def uses_unet(self) -> bool:
        return any(name != LATENT for name in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["blocks"] = list(self.blocks)
        return out

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> EmbeddingConfig:
        """A config as an index stored it, from any release: settings it predates read as they were then."""
        return cls.from_dict(ADDED_LATER | {k: v for k, v in data.items() if k != "dtype"})  # dtype: a runtime option now

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingConfig:
        """Named settings over the defaults (unnamed ones keep their defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown embedding settings: {sorted(unknown)}")
        values = dict(data)
        if "blocks" in values:
            values["blocks"] = tuple(values["blocks"])
        return cls(**values)

    def replace(self, **changes: Any) -> EmbeddingConfig:
        return dataclasses.replace(self, **changes)

    def fingerprint(self, model_fingerprint: str = "", legacy_dtype: str | None = None) -> str:
        """A short stable hash of every setting (and the model's own fingerprint when given).

        `legacy_dtype` reproduces the fingerprint an index got when dtype was still part of the
        config: bf16 and fp32 give the same vectors to float noise, so it no longer is.
        """
        config = self.to_dict() | ({"dtype": legacy_dtype} if legacy_dtype else {})
        for name, before in ADDED_LATER.items():
            if config[name] == before:
                del config[name]  # a config as it was before the setting keeps the fingerprint it had then
        if not self.trim_borders:
            config.pop("trim_repeat", None)  # without trimming, repeating it changes nothing
        payload = json.dumps({"config": config, "model": model_fingerprint}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RuntimeOptions:
    """How fast an embedding is computed; never changes the vectors beyond float noise."""

    device: Device = "auto"
    batch_size: int = 32
    workers: int = 2
    allow_download: bool = False
    # Compute dtype: "auto" picks bf16 where the hardware has it natively (AMX/AVX512-BF16 CPUs,
    # CUDA), else fp32. Vectors agree across dtypes to float noise (cosine > 0.9999, measured).
    dtype: Dtype = "auto"
    threads: int = 0  # compute threads; 0: every core this process may use (indexer.threads)
    # What runs the forward passes: "auto" is OpenVINO on a CPU for the bundled kind of model (~2x
    # faster, same vectors to float noise), torch elsewhere; "torch" or "openvino" to choose.
    runtime: RuntimeName = "auto"
    cache_dir: str = ""  # where traced model graphs are kept; "": $XDG_CACHE_HOME/diffsearch

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
