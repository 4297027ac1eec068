"""Reading and pooling a U-Net's intermediate activations."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from indexer.embedding.config import LATENT, PREDICTED_X0
from indexer.errors import ConfigError


def block_module(unet: nn.Module, name: str) -> nn.Module:
    """The U-Net block called `name` ('mid', 'down.N', 'up.N'), or a ConfigError listing the valid names."""
    if name == "mid" and getattr(unet, "mid_block", None) is not None:
        return unet.mid_block
    kind, _, index = name.partition(".")
    blocks = getattr(unet, f"{kind}_blocks", None)
    if blocks is not None and index.isdigit() and int(index) < len(blocks):
        return blocks[int(index)]
    raise ConfigError(f"block {name!r} is not in this U-Net; it has: {', '.join(available_blocks(unet))}")


def available_blocks(unet: nn.Module) -> list[str]:
    names = [f"down.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid")
    return names + [f"up.{i}" for i in range(len(unet.up_blocks))]


@contextmanager
def capture(unet: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store each named block's output (the hidden states) during the block."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        if name in (LATENT, PREDICTED_X0):
            continue

        def hook(_module: nn.Module, _inputs: object, output: object, name: str = name) -> None:
            store[name] = output[0] if isinstance(output, tuple) else output  # down blocks return (h, skips)

        handles.append(block_module(unet, name).register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def pool(x: torch.Tensor, grid: int, gap: bool, power: float = 1.0) -> list[torch.Tensor]:
    """(B, C, H, W) -> the parts [global mean (B, C)] + [g x g cell means (B, C*g*g)], each L2-normalised.

    With power != 1 every activation is first mapped to sign(x)|x|^power.
    """
    x = x.float()
    if power != 1.0:
        x = x.sign() * x.abs().pow(power)
    parts = []
    if gap:
        parts.append(x.mean(dim=(2, 3)))
    if grid:
        parts.append(F.adaptive_avg_pool2d(x, grid).flatten(1))
    return [F.normalize(p, dim=1) for p in parts]
