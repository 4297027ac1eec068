"""TAEF2: the tiny autoencoder (a distillation of the FLUX.2 VAE) that gives diffsearch its latent space.

The network follows `data/models/taef2/README.md` layer by layer. Both halves are flat
`nn.Sequential`s, so the state-dict keys are the layer positions ("3.conv.2.bias") and the
published weights load with strict key matching.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from indexer.errors import ModelLoadError

LATENT_CHANNELS = 32
DOWNSCALE = 8


def _conv(n_in: int, n_out: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """Residual 64 -> 64 block; `pooled` blocks add a 1x1 bottleneck with GroupNorm first."""

    def __init__(self, channels: int = 64, pooled: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(), _conv(channels, channels)
        )
        self.skip = nn.Identity()
        self.pool: nn.Module | None = None
        if pooled:
            self.pool = nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


class SoftClamp(nn.Module):
    """tanh(x / 3) * 3: keeps decoder inputs in a range the decoder saw in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def build_encoder() -> nn.Sequential:
    """RGB in [0, 1], (B, 3, H, W) -> raw latent (B, 32, H/8, W/8)."""
    return nn.Sequential(
        _conv(3, 64), Block(),
        _conv(64, 64, bias=False, stride=2), Block(), Block(), Block(),
        _conv(64, 64, bias=False, stride=2), Block(), Block(), Block(),
        _conv(64, 64, bias=False, stride=2), Block(pooled=True), Block(pooled=True), Block(pooled=True),
        _conv(64, LATENT_CHANNELS),
    )  # fmt: skip


def build_decoder() -> nn.Sequential:
    """Raw latent (B, 32, h, w) -> RGB (B, 3, 8h, 8w); clamp the result to [0, 1]."""
    return nn.Sequential(
        SoftClamp(), _conv(LATENT_CHANNELS, 64), nn.ReLU(),
        Block(pooled=True), Block(pooled=True), Block(pooled=True),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), Block(), Block(), Block(),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), Block(), Block(), Block(),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), Block(),
        _conv(64, 3),
    )  # fmt: skip


def _load_half(net: nn.Sequential, path: Path) -> nn.Sequential:
    if not path.is_file():
        raise ModelLoadError(f"TAEF2 weights not found: {path}")
    state = load_file(str(path))
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not match the TAEF2 architecture: {exc}") from exc
    return net.eval().requires_grad_(False)


def load_encoder(folder: Path) -> nn.Sequential:
    """The pretrained encoder from `folder/taef2_encoder.safetensors`."""
    return _load_half(build_encoder(), Path(folder) / "taef2_encoder.safetensors")


def load_decoder(folder: Path) -> nn.Sequential:
    """The pretrained decoder from `folder/taef2_decoder.safetensors`."""
    return _load_half(build_decoder(), Path(folder) / "taef2_decoder.safetensors")
