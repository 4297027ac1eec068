"""The model card of a trained model: data, steps, wall time, loss curve and samples decoded by TAEF2."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image, ImageDraw

from indexer.embedding.model import MANIFEST, load_model
from indexer.embedding.taef2 import load_decoder

log = logging.getLogger(__name__)


def loss_curve_png(
    losses: list[tuple[int, float]], path: Path, size: tuple[int, int] = (640, 360), title: str = "training loss (noise MSE, 50-step mean)"
) -> None:
    """Training loss (moving average of 50 steps) against step, drawn with PIL."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if len(losses) < 2:
        image.save(path)
        return
    steps = np.array([s for s, _ in losses], dtype=float)
    values = np.array([v for _, v in losses], dtype=float)
    window = min(50, len(values))
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    steps = steps[window - 1 :]
    left, right, top, bottom = 60, width - 20, 20, height - 40
    lo, hi = float(smooth.min()), float(np.percentile(smooth, 99))
    hi = hi if hi > lo else lo + 1e-3

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (step - steps[0]) / max(steps[-1] - steps[0], 1) * (right - left)
        y = bottom - (min(value, hi) - lo) / (hi - lo) * (bottom - top)
        return x, y

    draw.rectangle((left, top, right, bottom), outline="black")
    draw.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(42, 109, 244), width=2)
    for frac in (0.0, 0.5, 1.0):
        value = lo + frac * (hi - lo)
        draw.text((4, xy(steps[0], value)[1] - 6), f"{value:.3f}", fill="black")
    draw.text((left, bottom + 8), f"step {int(steps[0])}", fill="black")
    draw.text((right - 80, bottom + 8), f"step {int(steps[-1])}", fill="black")
    draw.text((left + 8, top + 6), title, fill="black")
    image.save(path)


@torch.no_grad()
def sample_grid_png(model_dir: Path, path: Path, n: int = 16, steps: int = 50, seed: int = 0) -> None:
    """n latents sampled with DDIM from pure noise, de-normalised and decoded by TAEF2, as a 4-wide grid."""
    model = load_model(str(model_dir))
    manifest = json.loads((Path(model_dir) / MANIFEST).read_text())
    decoder = load_decoder((Path(model_dir) / manifest["autoencoder"]).resolve())
    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    side = model.unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, model.unet.config.in_channels, side, side), generator=generator)
    for t in scheduler.timesteps:
        x = scheduler.step(model.predict_noise(x, int(t)), t, x).prev_sample
    mean = torch.tensor(manifest["latent_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(manifest["latent_std"]).view(1, -1, 1, 1)
    pixels = decoder(x * std + mean).clamp(0, 1)
    cols = 4
    rows = (n + cols - 1) // cols
    tile = pixels.shape[-1]
    grid = Image.new("RGB", (cols * tile, rows * tile), "white")
    for i, img in enumerate(pixels):
        array = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        grid.paste(Image.fromarray(array), ((i % cols) * tile, (i // cols) * tile))
    grid.save(path)


def _source_config(source: Path) -> dict:
    """The training config of the run a model continued: an exported model folder's manifest, or the
    train_config.json beside a checkpoint (empty when neither is there)."""
    if source.is_dir() and (source / MANIFEST).is_file():
        return json.loads((source / MANIFEST).read_text()).get("train_config", {})
    config = source.parent / "train_config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def _stage_kind(cfg: dict) -> str:
    if cfg.get("ssl_weight", 0) > 0:
        return "diffusion + self-supervised NT-Xent" + (" + class" if cfg.get("class_weight", 0) > 0 else " (no labels)")
    return "diffusion + class (hybrid)" if cfg.get("class_weight", 0) > 0 else "diffusion-only"


def write_model_card(
    model_dir: Path,
    run_dir: Path,
    data_note: str,
    extra: str = "",
    views_note: str = "each photo and its mirror image, centre-cropped",
    licences: str = "The training photos are Caltech-101 (CC BY 4.0).",
) -> Path:
    """README.md with the facts of the run, loss_curve.png and samples.png, all inside model_dir."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = manifest["train_config"]
    losses, steps, seconds, stages = state["losses"], state["step"], state["seconds"], ""
    init_file = Path(run_dir) / "init.json"
    if init_file.is_file():  # this run continued another one: count and draw both
        init = json.loads(init_file.read_text())
        losses = [(s, v) for s, v in init["losses"]] + [(s + init["steps"], v) for s, v in losses]
        steps, seconds = steps + init["steps"], seconds + init["seconds"]
        kind = _stage_kind(_source_config(Path(init["init_from"])))
        stages = f"{init['steps']} {kind} steps ({init['seconds'] / 60:.0f} min), then {state['step']} more; "
    if cfg.get("class_weight", 0) > 0:
        classes = cfg["num_classes"]
        stages += (f"hybrid steps add a class-prediction loss (weight {cfg['class_weight']}, {classes} folder classes, "
                   "linear head on the pooled mid block, weighted by alpha_bar(t); the head is not exported)")  # fmt: skip
    ssl_figure = ""
    if cfg.get("ssl_weight", 0) > 0:
        stages += (f"diffusion loss on every view plus a self-supervised NT-Xent term (weight {cfg['ssl_weight']}, "
                   f"temperature {cfg['ssl_temperature']}): two edited views of each of {cfg['ssl_batch']} photos per step, "
                   f"noised to t <= {cfg['ssl_t_max']}, pooled from the mid block as search pools it, through a small "
                   "projector (not exported)" + ("" if cfg.get("class_weight", 0) > 0 else "; no labels"))  # fmt: skip
        loss_curve_png(state.get("ssl_losses", []), model_dir / "ssl_curve.png", title="self-supervised loss (NT-Xent, 50-step mean)")
        ssl_figure = "\n![self-supervised loss](ssl_curve.png)\n"
    loss_curve_png(losses, model_dir / "loss_curve.png")
    sample_grid_png(model_dir, model_dir / "samples.png")
    params = sum(p.numel() for p in load_model(str(model_dir)).unet.parameters())
    final = np.mean([v for _, v in losses[-200:]]) if losses else float("nan")
    card = f"""# diffsearch latent diffusion U-Net

A diffusers `UNet2DModel` ({params / 1e6:.1f}M parameters, channels {cfg["block_out_channels"]},
self-attention below full resolution) trained by `diffsearch train` to denoise TAEF2 latents
(32 channels, {cfg["image_size"] // 8}x{cfg["image_size"] // 8} for {cfg["image_size"]}px photos),
epsilon prediction, {cfg["beta_schedule"]} schedule with {cfg["num_train_timesteps"]} steps.
The latents are normalised per channel with the statistics in `diffsearch.json`.

| fact | value |
|---|---|
| data | {data_note} ({views_note}) |
| steps | {steps} at batch {cfg["batch_size"]} |
| stages | {stages or "one: diffusion loss only"} |
| wall time | {seconds / 60:.1f} min training on {"CUDA" if torch.cuda.is_available() else "CPU"} |
| optimiser | AdamW lr {cfg["lr"]}, warm-up {cfg["warmup_steps"]}, cosine to 10%, weight decay {cfg["weight_decay"]} |
| EMA | decay {cfg["ema_decay"]} (the exported weights) |
| final loss | {final:.4f} (mean of the last 200 steps) |
| seed | {cfg["seed"]} |

![loss curve](loss_curve.png)
{ssl_figure}
16 samples, DDIM 50 steps from pure noise, decoded by TAEF2 (what the model learned about
photos; it is trained for search features, not for image quality):

![samples](samples.png)

{extra}

Licences: the U-Net weights are this project's (MIT). TAEF2 (`../taef2/`) is MIT, by
madebyollin. {licences}
"""
    (model_dir / "README.md").write_text(card)
    return model_dir / "README.md"
