from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from indexer.embedding import taef2
from indexer.errors import ModelLoadError
from indexer.images import prepare

TAEF2 = Path(__file__).resolve().parents[3] / "data" / "models" / "taef2"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * np.log10(1.0 / torch.mean((a - b) ** 2).item()))


@torch.no_grad()
def test_real_photo_round_trips_with_pretrained_weights_and_not_with_random(sample_photos):
    x = prepare(sample_photos[0], 256)[None]
    encoder, decoder = taef2.load_encoder(TAEF2), taef2.load_decoder(TAEF2)
    latent = encoder(x)
    assert latent.shape == (1, 32, 32, 32)
    assert psnr(decoder(latent).clamp(0, 1), x) >= 24.0
    torch.manual_seed(0)
    random_encoder, random_decoder = taef2.build_encoder().eval(), taef2.build_decoder().eval()
    assert psnr(random_decoder(random_encoder(x)).clamp(0, 1), x) < 15.0


def test_weights_load_with_strict_keys(tmp_path):
    state = {k: v for k, v in taef2.build_encoder().state_dict().items() if not k.startswith("14.")}
    save_file(state, str(tmp_path / "taef2_encoder.safetensors"))
    with pytest.raises(ModelLoadError, match="does not match"):
        taef2.load_encoder(tmp_path)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match="taef2_decoder.safetensors"):
        taef2.load_decoder(tmp_path)
