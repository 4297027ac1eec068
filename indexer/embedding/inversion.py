"""Deterministic DDIM inversion (Song et al. 2021, eq. 13 run backwards) with diffusers' scheduler.

DDIM's update is deterministic, so running it from the clean latent x_0 towards noise maps an
image to the x_t the model would have denoised into it. diffusers' DDIMInverseScheduler holds the
maths; this module only chooses the timesteps: k equal steps from 0 to t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMInverseScheduler

from indexer.errors import ConfigError
from indexer.embedding.model import DiffusionModel


def make_inverse_scheduler(scheduler_config: dict[str, Any], timestep: int, steps: int) -> DDIMInverseScheduler:
    """A DDIMInverseScheduler whose step size is timestep / steps (validated, never rounded silently)."""
    scheduler = DDIMInverseScheduler.from_config(scheduler_config, set_alpha_to_one=False)
    total = int(scheduler.config.num_train_timesteps)
    if not 0 <= timestep < total:
        raise ConfigError(f"timestep must be in [0, {total}) for this model, got {timestep}")
    stride = timestep // steps
    # DDIMInverseScheduler.step moves by num_train_timesteps // num_inference_steps.
    num_inference_steps = total // stride
    if total // num_inference_steps != stride:
        raise ConfigError(
            f"timestep {timestep} in {steps} inversion steps needs a stride of {stride}, which "
            f"{total} train timesteps cannot divide into; choose timestep/inversion_steps that divides {total}"
        )
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


@torch.no_grad()
def invert(
    model: DiffusionModel,
    x0: torch.Tensor,
    timestep: int,
    steps: int,
    predict: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """x_t from x_0 by `steps` DDIM inversion steps (steps=0: x_0 itself, fed at t).

    `predict(sample, t)` gives the U-Net's output (default: the model's own torch forward pass;
    the Embedder passes its runtime's)."""
    if steps == 0 or timestep == 0:
        return x0
    scheduler = make_inverse_scheduler(model.scheduler_config, timestep, steps)
    stride = timestep // steps
    predict = predict or model.predict_noise
    sample = x0
    for i in range(1, steps + 1):
        t = i * stride
        # Predict the noise at the next timestep from the current sample (the usual inversion
        # approximation, as in diffusers' inversion pipelines), then let DDIM move to t.
        noise = predict(sample, t).to(sample.dtype)
        sample = scheduler.step(noise, t, sample).prev_sample
    return sample
