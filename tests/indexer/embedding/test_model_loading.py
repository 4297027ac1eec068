"""Tiny randomly initialised diffusers models, saved with save_pretrained and loaded by the real loader."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from safetensors.torch import save_file

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.errors import ConfigError, ModelLoadError
from indexer.embedding.model import EMPTY_PROMPT_FILE, load_model

CPU = RuntimeOptions(device="cpu", batch_size=4)


def save_pixel_pipeline(folder, with_scheduler=True):
    torch.manual_seed(0)
    UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).save_pretrained(folder / "unet")  # fmt: skip
    if with_scheduler:
        DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def save_sd_pipeline(folder, conditioning="stored"):
    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=64,
    ).save_pretrained(folder / "vae")  # fmt: skip
    UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).save_pretrained(folder / "unet")  # fmt: skip
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear").save_pretrained(folder / "scheduler")
    if conditioning == "stored":
        save_file({"embedding": torch.randn(1, 77, 32)}, str(folder / EMPTY_PROMPT_FILE))
    elif conditioning == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        CLIPTextModel(
            CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           vocab_size=300, max_position_embeddings=77)
        ).save_pretrained(folder / "text_encoder")  # fmt: skip
        letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{t: i + 2 for i, t in enumerate(letters + [f"{c}</w>" for c in letters])}}
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder / "tokenizer")
    return folder


def embed_twice(model, config, photos):
    a = Embedder(config, CPU, model=model).embed(photos)
    b = Embedder(config, RuntimeOptions(device="cpu", batch_size=3), model=model).embed(photos[::-1])[::-1]
    assert a.shape[0] == len(photos) and np.isfinite(a).all()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() <= 1e-5
    return a


def test_pixel_space_pipeline(tmp_path, sample_photos):
    model = load_model(str(save_pixel_pipeline(tmp_path)))
    assert model.kind == "pixel" and model.downscale == 1
    config = EmbeddingConfig(model=str(tmp_path), image_size=32, blocks=("down.1", "mid", "up.0"), timestep=50, inversion_steps=2)
    embed_twice(model, config, sample_photos[:5])


def test_pixel_unet_without_scheduler_uses_ddpm_defaults(tmp_path, sample_photos):
    model = load_model(str(save_pixel_pipeline(tmp_path, with_scheduler=False)))
    assert model.num_train_timesteps == 1000


@pytest.mark.parametrize("conditioning", ["stored", "text_encoder"])
def test_stable_diffusion_style_pipeline(tmp_path, sample_photos, conditioning):
    model = load_model(str(save_sd_pipeline(tmp_path, conditioning)))
    assert model.kind == "stable-diffusion" and model.downscale == 2
    assert model.conditioning is not None and model.conditioning.shape[-1] == 32
    config = EmbeddingConfig(model=str(tmp_path), image_size=32, blocks=("latent", "mid", "up.1"), timestep=100, inversion_steps=2)
    embed_twice(model, config, sample_photos[:4])


def test_conditional_unet_without_conditioning_is_a_clear_error(tmp_path):
    save_sd_pipeline(tmp_path, conditioning=None)
    with pytest.raises(ModelLoadError, match="text_encoder"):
        load_model(str(tmp_path))


def test_unknown_block_lists_the_valid_ones(tmp_path, sample_photos):
    model = load_model(str(save_pixel_pipeline(tmp_path)))
    with pytest.raises(ConfigError, match="down.0, down.1, mid, up.0, up.1"):
        Embedder(EmbeddingConfig(model=str(tmp_path), image_size=32, blocks=("up.7",)), CPU, model=model).embed(sample_photos[:1])


def test_image_size_must_fit_the_unet(default_model):
    # TAEF2 downscales by 8 and the default U-Net by 4 more: sides must be multiples of 32.
    with pytest.raises(ConfigError, match="multiple of 32"):
        Embedder(EmbeddingConfig(image_size=136), CPU, model=default_model)
    Embedder(EmbeddingConfig(image_size=136, blocks=("latent",)), CPU, model=default_model)  # no U-Net: 8 will do


def test_offline_hub_id_fails_naming_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="google/ddpm-cifar10-32.*allow-download"):
        load_model("google/ddpm-cifar10-32")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        load_model(str(tmp_path))
