from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from indexer.errors import ConfigError
from indexer.embedding.inversion import invert, make_inverse_scheduler


class FixedNoiseNet(torch.nn.Module):
    """A 'U-Net' whose noise prediction is the same tensor at every x_t: DDIM is then exactly invertible."""

    def __init__(self, noise: torch.Tensor) -> None:
        super().__init__()
        self.noise = noise
        self.config = SimpleNamespace(block_out_channels=(1,))

    def forward(self, sample, t):  # noqa: ANN001, ANN201
        return SimpleNamespace(sample=self.noise.expand_as(sample))


@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_inversion_with_a_fixed_noise_prediction_is_the_forward_process(default_model, steps):
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 32, 16, 16), torch.randn(1, 32, 16, 16)
    model = replace(default_model, unet=FixedNoiseNet(noise))
    xt = invert(model, x0, timestep=200, steps=steps)
    alphas = DDIMScheduler.from_config(default_model.scheduler_config).alphas_cumprod
    # diffusers treats the input as the sample at t=0 (alpha_0 just below 1), so the clean image
    # the forward process starts from is x0 with timestep 0's sliver of noise removed.
    clean = (x0 - (1 - alphas[0]).sqrt() * noise) / alphas[0].sqrt()
    expected = alphas[200].sqrt() * clean + (1 - alphas[200]).sqrt() * noise  # q(x_t | x_0), DDPM eq. 4
    torch.testing.assert_close(xt, expected, atol=1e-4, rtol=1e-4)
    # And DDIM sampling with the same stride walks back to x0.
    sampler = DDIMScheduler.from_config(default_model.scheduler_config, set_alpha_to_one=False)
    sampler.set_timesteps(1000 // (200 // steps))
    sample = xt
    for t in range(200, 0, -(200 // steps)):
        sample = sampler.step(model.predict_noise(sample, t), t, sample).prev_sample
    torch.testing.assert_close(sample, x0, atol=1e-3, rtol=1e-3)


def test_inversion_moves_a_real_latent_through_the_real_unet(default_model, sample_photos):
    from indexer.images import prepare

    x0 = default_model.encode(torch.stack([prepare(p, 128) for p in sample_photos[:2]]))
    with torch.no_grad():
        xt = invert(default_model, x0, timestep=200, steps=4)
    assert torch.isfinite(xt).all() and (xt - x0).abs().mean() > 0.05


def test_zero_steps_is_the_clean_latent(default_model):
    x0 = torch.randn(2, 32, 16, 16)
    assert invert(default_model, x0, timestep=100, steps=0) is x0


def test_stride_that_does_not_divide_the_schedule_is_refused(default_model):
    with pytest.raises(ConfigError, match="divide"):
        make_inverse_scheduler(default_model.scheduler_config, timestep=999, steps=1)
    with pytest.raises(ConfigError, match="timestep must be in"):
        make_inverse_scheduler(default_model.scheduler_config, timestep=1000, steps=1)
