"""One loader for the three kinds of diffusion model diffsearch embeds with.

1. ``latent-taef2``: the bundled default, a folder with ``diffsearch.json`` (TAEF2 autoencoder +
   latent statistics), ``unet/`` (UNet2DModel) and ``scheduler/``.
2. ``pixel``: a pixel-space diffusers pipeline folder (``unet/`` UNet2DModel + ``scheduler/``),
   the layout of google/ddpm-cifar10-32.
3. ``stable-diffusion``: ``vae/`` AutoencoderKL + ``unet/`` UNet2DConditionModel + ``scheduler/``,
   conditioned on the empty-prompt embedding (from ``text_encoder/`` + ``tokenizer/``, or a
   stored ``empty_prompt_embedding.safetensors``).

Everything loads with ``from_pretrained(..., local_files_only=True)`` unless the caller opts in
to downloads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from safetensors.torch import load_file
from torch import nn

from indexer.bundled import DATA_DIR
from indexer.embedding import taef2
from indexer.embedding.config import DEFAULT_MODEL
from indexer.errors import ModelLoadError
from indexer.embedding.projection import FOLDER as PROJECTIONS
from indexer.embedding.projection import Projection, load_projections

log = logging.getLogger(__name__)

ModelKind = Literal["latent-taef2", "pixel", "stable-diffusion"]
MANIFEST = "diffsearch.json"
EMPTY_PROMPT_FILE = "empty_prompt_embedding.safetensors"


@dataclass
class DiffusionModel:
    """A loaded model: an image encoder into the U-Net's space, the U-Net, and its noise schedule."""

    name: str
    kind: ModelKind
    unet: UNet2DModel | UNet2DConditionModel
    scheduler_config: dict[str, Any]
    encode: Callable[[torch.Tensor], torch.Tensor]  # RGB in [0, 1] -> the U-Net's input space
    downscale: int  # image pixels per U-Net input cell
    fingerprint: str
    encoder_fingerprint: str  # the image -> x0 part alone (what cached latents depend on)
    conditioning: torch.Tensor | None = None  # (1, tokens, dim) for conditional U-Nets
    # Latent models: the autoencoder's raw latent -> the U-Net's input space (encode's last step),
    # for training tools that cache raw latents. None for pixel-space models.
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None
    # True where the encoder gives bit-identical rows at batch size 1 and above in bf16 (measured
    # for TAEF2); elsewhere a lone image is encoded as a pair (see Embedder._batched).
    encoder_batch_invariant: bool = False
    projections: dict[str, Projection] = field(default_factory=dict)
    modules: list[nn.Module] = field(default_factory=list)  # everything to move with .to()
    # Graphs compiled from this model by a runtime (indexer.embedding.runtimes), kept so that
    # several embedders of one model compile once.
    compiled: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def min_image_multiple(self) -> int:
        """Image sides must be multiples of this for the U-Net's down/up path to line up."""
        return self.downscale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def to(self, device: torch.device) -> DiffusionModel:
        for module in self.modules:
            module.to(device)
        if self.conditioning is not None:
            self.conditioning = self.conditioning.to(device)
        return self

    def predict_noise(self, sample: torch.Tensor, timestep: int) -> torch.Tensor:
        """The U-Net's output at one timestep for a batch (what the scheduler steps with)."""
        t = torch.full((sample.shape[0],), timestep, device=sample.device, dtype=torch.long)
        if isinstance(self.unet, UNet2DConditionModel):
            assert self.conditioning is not None
            context = self.conditioning.expand(sample.shape[0], -1, -1).to(sample.dtype)
            return self.unet(sample, t, encoder_hidden_states=context).sample
        return self.unet(sample, t).sample


def resolve_model_path(name: str, allow_download: bool = False) -> Path:
    """A local folder for `name`: 'default', a path, or a Hugging Face hub id (cache or opt-in download)."""
    if name == DEFAULT_MODEL:
        path = DATA_DIR / "models" / "default"
        if not (path / MANIFEST).is_file():
            raise ModelLoadError(f"the bundled default model is missing from {path}")
        return path
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model {name!r} is a file; give the model's folder")
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=not allow_download))
    except Exception as exc:  # huggingface_hub raises several unrelated types here
        hint = "it is not on this machine" if not allow_download else f"download failed ({exc})"
        raise ModelLoadError(
            f"model {name!r} is neither a local folder nor in the Hugging Face cache: {hint}. "
            "Give a folder path, or pass --allow-download (DIFFSEARCH_ALLOW_DOWNLOAD=1) while online."
        ) from None


def load_model(name: str = DEFAULT_MODEL, allow_download: bool = False) -> DiffusionModel:
    """Load any of the three kinds from a folder, the bundled default, or a hub id."""
    path = resolve_model_path(name, allow_download)
    if (path / MANIFEST).is_file():
        loader = _load_latent_taef2
    elif (path / "vae").is_dir() and (path / "unet").is_dir():
        loader = _load_stable_diffusion
    elif (path / "unet").is_dir() or (path / "config.json").is_file():
        loader = _load_pixel
    else:
        raise ModelLoadError(f"{path} is not a diffusers model folder (no {MANIFEST}, unet/ or config.json)")
    try:
        model = loader(path, name)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load model {name!r} from {path}: {exc}") from exc
    for module in model.modules:
        module.eval().requires_grad_(False)
    log.info("loaded %s model %r (%s)", model.kind, name, model.fingerprint)
    return model


def _scheduler_config(path: Path) -> dict[str, Any]:
    folder = path / "scheduler"
    if (folder / "scheduler_config.json").is_file():
        return dict(DDPMScheduler.load_config(folder, local_files_only=True))
    log.info("%s has no scheduler/: using diffusers' DDPMScheduler defaults", path)
    return dict(DDPMScheduler().config)


def _fingerprint(path: Path, *parts: str) -> str:
    """Hash of configs, weight sizes and the weight files' first and last MiB (fast on GB files)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
    for file in sorted(path.rglob("*")):
        if PROJECTIONS in file.relative_to(path).parts:
            continue  # projections are keyed by this fingerprint; the embedder hashes the one it uses
        if file.suffix in (".json", ".txt") and file.is_file():
            digest.update(file.read_bytes())
        elif file.suffix in (".safetensors", ".bin") and file.is_file():
            size = file.stat().st_size
            digest.update(str(size).encode())
            with file.open("rb") as fh:
                digest.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def _unet_folder(path: Path) -> tuple[Path, str | None]:
    return (path, "unet") if (path / "unet").is_dir() else (path, None)


def _load_latent_taef2(path: Path, name: str) -> DiffusionModel:
    manifest = json.loads((path / MANIFEST).read_text())
    ae_path = (path / manifest.get("autoencoder", "../taef2")).resolve()
    encoder = taef2.load_encoder(ae_path)
    shift = torch.tensor(manifest["latent_mean"], dtype=torch.float32).view(1, -1, 1, 1)
    scale = torch.tensor(manifest["latent_std"], dtype=torch.float32).view(1, -1, 1, 1)

    # channels_last: ~1.5x faster TAEF2 convolutions on CPU in bf16 (measured; the U-Net is
    # slower that way, so its input goes back to the default layout).
    encoder.to(memory_format=torch.channels_last)

    def normalise(latent: torch.Tensor) -> torch.Tensor:
        return (latent - shift.to(latent.device)) / scale.to(latent.device)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return normalise(encoder(pixels.contiguous(memory_format=torch.channels_last)).contiguous())

    unet = UNet2DModel.from_pretrained(path, subfolder="unet", local_files_only=True, low_cpu_mem_usage=False)
    return DiffusionModel(
        name=name,
        kind="latent-taef2",
        unet=unet,
        scheduler_config=_scheduler_config(path),
        encode=encode,
        normalise=normalise,
        downscale=taef2.DOWNSCALE,
        fingerprint=_fingerprint(path, json.dumps(manifest, sort_keys=True)),
        encoder_fingerprint=_fingerprint(ae_path, json.dumps([manifest["latent_mean"], manifest["latent_std"]])),
        encoder_batch_invariant=True,
        projections=load_projections(path),
        modules=[encoder, unet],
    )


def _load_pixel(path: Path, name: str) -> DiffusionModel:
    root, sub = _unet_folder(path)
    unet = UNet2DModel.from_pretrained(root, subfolder=sub, local_files_only=True, low_cpu_mem_usage=False)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return pixels * 2.0 - 1.0

    return DiffusionModel(
        name=name,
        kind="pixel",
        unet=unet,
        scheduler_config=_scheduler_config(path),
        encode=encode,
        downscale=1,
        fingerprint=_fingerprint(path),
        encoder_fingerprint="pixels",
        projections=load_projections(path),
        modules=[unet],
    )


def _load_stable_diffusion(path: Path, name: str) -> DiffusionModel:
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True, low_cpu_mem_usage=False)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True, low_cpu_mem_usage=False)
    scaling = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        # The posterior mean, not a sample: embeddings must be deterministic.
        return (vae.encode(pixels * 2.0 - 1.0).latent_dist.mean - shift) * scaling

    return DiffusionModel(
        name=name,
        kind="stable-diffusion",
        unet=unet,
        scheduler_config=_scheduler_config(path),
        encode=encode,
        downscale=2 ** (len(vae.config.block_out_channels) - 1),
        fingerprint=_fingerprint(path),
        encoder_fingerprint=_fingerprint(path / "vae"),
        conditioning=_empty_prompt(path, unet),
        projections=load_projections(path),
        modules=[vae, unet],
    )


def _empty_prompt(path: Path, unet: UNet2DConditionModel) -> torch.Tensor:
    """The text encoder's embedding of "" (classifier-free guidance's unconditional input)."""
    stored = path / EMPTY_PROMPT_FILE
    if stored.is_file():
        embedding = load_file(str(stored))["embedding"].float()
    elif (path / "text_encoder").is_dir() and (path / "tokenizer").is_dir():
        from transformers import AutoTokenizer, CLIPTextModel

        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True).eval()
        length = min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))
        tokens = tokenizer([""], padding="max_length", max_length=length, return_tensors="pt")
        with torch.no_grad():
            embedding = encoder(tokens.input_ids).last_hidden_state.float()
    else:
        raise ModelLoadError(
            f"{path} has a conditional U-Net but neither text_encoder/ + tokenizer/ nor {EMPTY_PROMPT_FILE}"
        )
    if embedding.ndim == 2:
        embedding = embedding[None]
    expected = unet.config.cross_attention_dim
    if embedding.shape[-1] != expected:
        raise ModelLoadError(f"empty-prompt embedding has width {embedding.shape[-1]}, the U-Net expects {expected}")
    return embedding
