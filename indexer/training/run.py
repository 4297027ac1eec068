"""`diffsearch train`: photos -> cached TAEF2 latents -> trained U-Net -> a diffusers-format model folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from indexer.bundled import DATA_DIR
from indexer.embedding.model import MANIFEST
from indexer.training.latents import encode_photos
from indexer.training.train import TrainConfig, build_scheduler, build_unet, train

log = logging.getLogger(__name__)

TAEF2_DIR = DATA_DIR / "models" / "taef2"


def latent_statistics(latents: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (what makes the U-Net's input roughly unit Gaussian)."""
    x = latents.astype(np.float32)
    return x.mean(axis=(0, 2, 3)).tolist(), x.std(axis=(0, 2, 3)).tolist()


def normalise_latents(latents: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(latents - mean) / std per channel, as float16: the U-Net's input space."""
    return ((latents.astype(np.float32) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]).astype(np.float16)


def folder_labels(photos: Sequence[Path]) -> tuple[np.ndarray, list[str]]:
    """Each photo's class: the name of the folder it is in (Caltech-101, ImageNet-style trees)."""
    classes = sorted({p.parent.name for p in photos})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[p.parent.name] for p in photos], dtype=np.int64), classes


def run_training(
    photos: Sequence[Path],
    out_dir: Path,
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    workers: int = 2,
    init_from: Path | None = None,
) -> Path:
    """Train on `photos` and write the model folder `out_dir`; returns it.

    With cfg.class_weight > 0 each photo's folder is its class (the auxiliary loss of train.py).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    latents, kept = encode_photos(photos, TAEF2_DIR, cfg.image_size, run_dir.parent / "cache", workers=workers)
    labels = None
    if cfg.class_weight > 0:
        labels, classes = folder_labels(photos)
        labels = np.concatenate([labels[kept], labels[kept]])  # the mirrored copies keep their class
        cfg = dataclasses.replace(cfg, num_classes=len(classes))
        (run_dir / "classes.json").write_text(json.dumps(classes))
    mean, std = latent_statistics(latents)
    normed = normalise_latents(latents, mean, std)
    (run_dir / "stats.json").write_text(json.dumps({"latent_mean": mean, "latent_std": std, "photos": int(kept.sum())}))
    ema, losses = train(normed, cfg, run_dir, resume=resume, labels=labels, init_from=init_from)
    facts = {"photos": int(kept.sum()), "steps": losses[-1][0] if losses else 0, "wall_minutes": (time.time() - started) / 60}
    export_model(ema, cfg, mean, std, out_dir, facts, losses)
    return out_dir


def export_model(
    unet: torch.nn.Module, cfg: TrainConfig, mean: list[float], std: list[float], out_dir: Path, facts: dict,
    losses: list[tuple[int, float]] | None = None,
) -> None:
    """Write `unet/` (fp16 safetensors), `scheduler/`, the manifest, the loss curve's numbers
    (losses.json, read when a later run starts from this folder) and the TAEF2 licence beside them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.to(torch.float16).save_pretrained(out_dir / "unet", safe_serialization=True)
    unet.to(torch.float32)
    build_scheduler(cfg).save_pretrained(out_dir / "scheduler")
    manifest = {
        "kind": "latent-taef2",
        "autoencoder": "../taef2",
        "image_size": cfg.image_size,
        "latent_mean": mean,
        "latent_std": std,
        "train_config": cfg.to_dict(),
        **facts,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if losses is not None:
        (out_dir / "losses.json").write_text(json.dumps(losses))
    if (out_dir / "../taef2").resolve() != TAEF2_DIR.resolve():
        # A model trained elsewhere carries its own copy of the autoencoder it was trained with.
        shutil.copytree(TAEF2_DIR, out_dir / "taef2", dirs_exist_ok=True)
        manifest["autoencoder"] = "taef2"
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


def export_checkpoint(run_dir: Path, out_dir: Path) -> None:
    """Export the EMA weights of the latest checkpoint in `run_dir` (works while training runs)."""
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg_dict = dict(state["config"])
    cfg_dict["block_out_channels"] = tuple(cfg_dict["block_out_channels"])
    cfg = TrainConfig(**cfg_dict)
    unet = build_unet(cfg)
    unet.load_state_dict(state["ema"])
    stats = json.loads((run_dir / "stats.json").read_text())
    facts = {"photos": stats["photos"], "steps": state["step"], "wall_minutes": state["seconds"] / 60}
    export_model(unet, cfg, stats["latent_mean"], stats["latent_std"], out_dir, facts, state["losses"])
