"""Train a latent UNet2DModel on TAEF2 latents with a diffusers noise schedule (eps-prediction, EMA).

Short on purpose: a config dataclass, a model factory, one loop. Checkpoints carry their config
and the whole training state, so `resume=True` continues a stopped run exactly where it was.

With labels and `class_weight > 0` the run is hybrid generative-discriminative (in the spirit of
HybViT, Yang & Ji 2022): a linear head on the pooled mid block predicts each photo's class from the
same noisy forward pass that predicts the noise, and its cross-entropy, weighted by the signal
fraction alpha_bar(t), is added to the noise MSE. The U-Net stays a standard diffusion model (the head
is not exported); its mid-block features, which search pools, learn what separates photos.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from tqdm import tqdm

from indexer.embedding.features import capture, pool
from indexer.embedding.model import MANIFEST
from indexer.embedding.precision import bf16_autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    image_size: int = 128  # pixels; latents are image_size / 8 on a side
    block_out_channels: tuple[int, ...] = (64, 128, 256)  # 11M parameters: ~0.8 s per batch-64 step on 2 cores
    layers_per_block: int = 1
    attention_head_dim: int = 32  # self-attention in every block below full latent resolution
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    max_steps: int = 100_000
    max_minutes: float = 60.0  # wall-clock budget; whichever of steps/minutes comes first ends the run
    ema_decay: float = 0.999
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine: more steps at useful noise levels than linear
    weight_decay: float = 0.01
    checkpoint_every: int = 250
    seed: int = 0
    class_weight: float = 0.0  # weight of the auxiliary class-prediction loss (0: plain diffusion training)
    num_classes: int = 0  # set from the labels when class_weight > 0
    bf16: bool = True  # bf16 autocast where the hardware runs it natively (~2x fp32 there); fp32 elsewhere (precision.py)
    # Self-supervised term (SimCLR's NT-Xent): two edited views of one photo, noised to t <= ssl_t_max
    # (the levels search reads features at), must pool to neighbouring mid-block features against the
    # other photos of the batch. Needs precomputed views (indexer.training.latents.encode_views).
    ssl_weight: float = 0.0
    ssl_batch: int = 32  # photos per step for the SSL term (2 views each), on top of batch_size
    ssl_temperature: float = 0.1
    ssl_t_max: int = 100
    ssl_grid: int = 4  # the mid block is pooled as search pools it: global mean + grid x grid cells

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["block_out_channels"] = list(self.block_out_channels)
        return out


def build_unet(cfg: TrainConfig, channels: int = 32) -> UNet2DModel:
    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=cfg.image_size // 8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1),
        up_block_types=("AttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=32,
    )


def build_scheduler(cfg: TrainConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=False,  # latents are not confined to [-1, 1] the way pixels are
    )


class Projector(nn.Module):
    """Pooled mid-block features -> a small space for the contrastive loss (training only, as in SimCLR)."""

    def __init__(self, channels: int, grid: int, dim: int = 128) -> None:
        super().__init__()
        self.grid = grid
        self.net = nn.Sequential(nn.Linear(channels * (1 + grid * grid), 512), nn.GELU(), nn.Linear(512, dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat(pool(hidden, self.grid, gap=True), dim=1)  # unit parts, exactly as search pools
        return nn.functional.normalize(self.net(pooled), dim=1)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2N - 1 other views (unit vectors in)."""
    z = torch.cat([a, b])
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(logits, partner)


class ClassHead(nn.Module):
    """Global mean of a block's activations -> dropout -> linear class logits (training only)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(hidden.float().mean(dim=(2, 3))))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% over max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def initial_weights(source: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """The U-Net weights to start from and their lineage: a run's checkpoint.pt (its EMA weights) or
    an exported model folder (e.g. the bundled data/models/default: unet/ in fp16, read back as fp32)."""
    if source.is_dir():
        unet = UNet2DModel.from_pretrained(source / "unet", torch_dtype=torch.float32)
        facts = json.loads((source / MANIFEST).read_text())
        losses = json.loads((source / "losses.json").read_text()) if (source / "losses.json").is_file() else []
        lineage = {"init_from": str(source), "steps": facts.get("steps", 0), "seconds": 60 * facts.get("wall_minutes", 0.0), "losses": losses}
        return {k: v.to(device) for k, v in unet.state_dict().items()}, lineage
    state = torch.load(source, map_location=device, weights_only=False)
    return state["ema"], {"init_from": str(source), "steps": state["step"], "seconds": state["seconds"], "losses": state["losses"]}


def train(
    latents: npt.NDArray[np.float16],
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    labels: npt.NDArray[np.int64] | None = None,
    init_from: Path | None = None,
    views: npt.NDArray[np.float16] | None = None,
    device: str | None = None,
) -> tuple[UNet2DModel, list[tuple[int, float]]]:
    """Train on normalised latents (n, C, h, w); returns the EMA U-Net and the loss curve (noise MSE).

    `labels` (n,) feed the auxiliary class loss when cfg.class_weight > 0. `init_from` starts a new
    run from another run's checkpoint (its EMA weights) or an exported model folder, e.g. to add the class
    loss to a trained model or to fine-tune the bundled one.
    `views` (m, V >= 2, C, h, w), normalised like `latents`, feed the self-supervised term when
    cfg.ssl_weight > 0. `device`: where to train (default: CUDA when there is one, else the CPU).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = torch.from_numpy(latents)
    hybrid = cfg.class_weight > 0
    if hybrid and (labels is None or len(labels) != len(data) or cfg.num_classes <= int(labels.max())):
        raise ValueError("class_weight > 0 needs one label in [0, num_classes) per latent")
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64)) if hybrid else None
    contrastive = cfg.ssl_weight > 0
    if contrastive and (views is None or views.ndim != 5 or views.shape[1] < 2):
        raise ValueError("ssl_weight > 0 needs views of shape (m, V >= 2, C, h, w)")
    model = build_unet(cfg, data.shape[1]).to(device)
    if init_from is not None and not (resume and (run_dir / "checkpoint.pt").is_file()):
        weights, lineage = initial_weights(Path(init_from), device)
        model.load_state_dict(weights)
        (run_dir / "init.json").write_text(json.dumps(lineage))  # the model card tells both stages
        log.info("initialised from the EMA weights of %s (step %d)", init_from, lineage["steps"])
    ema = copy.deepcopy(model).requires_grad_(False)
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    head = ClassHead(cfg.block_out_channels[-1], max(cfg.num_classes, 1)).to(device)
    projector = Projector(cfg.block_out_channels[-1], cfg.ssl_grid).to(device)
    scheduler = build_scheduler(cfg)
    alphas = scheduler.alphas_cumprod.to(device)
    params = model_params + (list(head.parameters()) if hybrid else [])
    params += list(projector.parameters()) if contrastive else []
    # fused: one kernel for the whole update on a GPU, where a small U-Net's step is bound by launches
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    step, losses, class_losses, ssl_losses, spent = 0, [], [], [], 0.0
    ckpt = run_dir / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        if "head" in state:
            head.load_state_dict(state["head"])
        if "projector" in state:
            projector.load_state_dict(state["projector"])
        opt.load_state_dict(state["opt"])
        step, losses, spent = state["step"], state["losses"], state["seconds"]
        class_losses = state.get("class_losses", [])
        ssl_losses = state.get("ssl_losses", [])
        torch.set_rng_state(state["rng"])
        log.info("resumed from %s at step %d (%.1f min)", ckpt, step, spent / 60)
    generator = torch.Generator().manual_seed(cfg.seed + step)
    started = time.time() - spent
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training", unit="step")
    autocast = bf16_autocast(device, cfg.bf16)
    while step < cfg.max_steps and (time.time() - started) < cfg.max_minutes * 60:
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=generator)
        x0 = data[idx].float().to(device)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=generator).to(device)
        n_ssl = 0
        if contrastive:  # two different views of ssl_batch photos, at search-like noise levels
            photos = torch.randint(0, views.shape[0], (cfg.ssl_batch,), generator=generator).numpy()
            first = torch.randint(0, views.shape[1], (cfg.ssl_batch,), generator=generator).numpy()
            second = (first + torch.randint(1, views.shape[1], (cfg.ssl_batch,), generator=generator).numpy()) % views.shape[1]
            pair = torch.from_numpy(np.concatenate([views[photos, first], views[photos, second]]).astype(np.float32))
            x0 = torch.cat([x0, pair.to(device)])
            t = torch.cat([t, torch.randint(0, cfg.ssl_t_max + 1, (2 * cfg.ssl_batch,), generator=generator).to(device)])
            n_ssl = cfg.ssl_batch
        noise = torch.randn(x0.shape, generator=generator).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # q(x_t | x_0), DDPM eq. 4
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with autocast, capture(model, ["mid"] if hybrid or contrastive else []) as hidden:
            pred = model(xt, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)  # the views are denoised too
        total = loss
        if hybrid:
            mid = hidden["mid"][: cfg.batch_size]
            ce = torch.nn.functional.cross_entropy(head(mid), targets[idx].to(device), reduction="none")
            class_loss = (alphas[t[: cfg.batch_size]] * ce).mean()  # a photo buried in noise cannot be classified
            total = total + cfg.class_weight * class_loss
            class_losses.append((step + 1, class_loss.item()))
        if contrastive:
            z = projector(hidden["mid"][cfg.batch_size :].float())
            ssl_loss = nt_xent(z[:n_ssl], z[n_ssl:], cfg.ssl_temperature)
            total = total + cfg.ssl_weight * ssl_loss
            ssl_losses.append((step + 1, ssl_loss.item()))
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short runs: EMA warms up
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)  # every parameter in one call
        step += 1
        losses.append((step, loss.item()))
        bar.update(1)
        postfix = {"loss": f"{np.mean([l for _, l in losses[-50:]]):.4f}"}
        if hybrid:
            postfix["class"] = f"{np.mean([l for _, l in class_losses[-50:]]):.3f}"
        if contrastive:
            postfix["ssl"] = f"{np.mean([l for _, l in ssl_losses[-50:]]):.3f}"
        bar.set_postfix(postfix)
        if step % cfg.checkpoint_every == 0:
            _checkpoint(ckpt, model, ema, head, projector, opt, step, losses, class_losses, ssl_losses, time.time() - started, cfg)
    bar.close()
    _checkpoint(ckpt, model, ema, head, projector, opt, step, losses, class_losses, ssl_losses, time.time() - started, cfg)
    return ema.cpu(), losses


def _checkpoint(path: Path, model, ema, head, projector, opt, step: int, losses, class_losses, ssl_losses, seconds: float, cfg: TrainConfig) -> None:  # noqa: ANN001
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "head": head.state_dict(),
        "projector": projector.state_dict(),
        "ssl_losses": ssl_losses,
        "opt": opt.state_dict(),
        "step": step,
        "losses": losses,
        "class_losses": class_losses,
        "seconds": seconds,
        "rng": torch.get_rng_state(),
        "config": cfg.to_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a kill mid-save leaves the previous checkpoint intact
    (path.parent / "progress.json").write_text(json.dumps({"step": step, "minutes": seconds / 60}))
    log.info("checkpoint at step %d (%.1f min)", step, seconds / 60)
