"""A tiny real training run: latents cached, steps taken, resume continues, a loadable model folder + card."""

import json

import numpy as np
import pytest
import torch

from indexer.config import EmbeddingConfig, RuntimeOptions
from indexer.embedder import Embedder
from indexer.model import load_model
from indexer.training.card import write_model_card
from indexer.training.run import run_training
from indexer.training.train import TrainConfig, learning_rate

pytestmark = pytest.mark.slow


def test_train_resume_export_and_card(tmp_path, sample_photos):
    cfg = TrainConfig(image_size=64, block_out_channels=(32, 64), batch_size=8, max_steps=3, warmup_steps=1, checkpoint_every=2, max_minutes=5)
    out, run = tmp_path / "model", tmp_path / "runs" / "r"
    run_training(sample_photos[:12], out, cfg, run, workers=0)
    assert json.loads((run / "progress.json").read_text())["step"] == 3
    cached = list((tmp_path / "runs" / "cache").glob("latents-*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (24, 32, 8, 8)  # each photo and its mirror

    longer = TrainConfig(**{**cfg.to_dict(), "block_out_channels": (32, 64), "max_steps": 5})
    run_training(sample_photos[:12], out, longer, run, resume=True, workers=0)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 5 and len(state["losses"]) == 5  # continued, did not restart

    model = load_model(str(out))
    assert model.kind == "latent-taef2" and model.unet.config.sample_size == 8
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    vectors = Embedder(EmbeddingConfig(model=str(out), image_size=64, blocks=("latent", "mid")), RuntimeOptions(device="cpu"), model=model).embed(sample_photos[:2])
    assert vectors.shape[0] == 2 and np.isfinite(vectors).all()

    card = write_model_card(out, run, data_note="12 sample photos")
    text = card.read_text()
    assert "| steps | 5 at batch 8 |" in text and "12 sample photos" in text
    assert (out / "loss_curve.png").stat().st_size > 1000 and (out / "samples.png").stat().st_size > 1000


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 110) == pytest.approx(1e-4)
