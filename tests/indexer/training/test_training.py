"""A tiny real training run: latents cached, steps taken, resume continues, a loadable model folder + card."""

import json
import shutil

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.embedding.model import load_model
from indexer.training.card import write_model_card
from indexer.training.latents import encode_photos
from indexer.training.run import TAEF2_DIR, folder_labels, run_training
from indexer.training.train import TrainConfig, learning_rate

pytestmark = pytest.mark.slow


def test_train_resume_export_and_card(tmp_path, sample_photos):
    cfg = TrainConfig(image_size=64, block_out_channels=(32, 64), batch_size=8, max_steps=3, warmup_steps=1, checkpoint_every=2, max_minutes=5)
    out, run = tmp_path / "model", tmp_path / "runs" / "r"
    run_training(sample_photos[:12], out, cfg, run, workers=0)
    assert json.loads((run / "progress.json").read_text())["step"] == 3
    cached = [p for p in (tmp_path / "runs" / "cache").glob("latents-*.npy") if not p.name.endswith(".kept.npy")]
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


def _two_classes(tmp_path, sample_photos):
    """Six photos in folder a/, five in b/ plus an empty file there that cannot be read."""
    paths = []
    for i, photo in enumerate(sample_photos[:11]):
        folder = tmp_path / "photos" / ("a" if i < 6 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(Path(shutil.copy(photo, folder / photo.name)))
    (tmp_path / "photos" / "b" / "empty.jpg").write_bytes(b"")
    return paths[:8] + [tmp_path / "photos" / "b" / "empty.jpg"] + paths[8:]


def test_unreadable_photos_are_left_out_and_recorded(tmp_path, sample_photos):
    paths = _two_classes(tmp_path, sample_photos)
    latents, kept = encode_photos(paths, TAEF2_DIR, 64, tmp_path / "cache", workers=0)
    assert kept.tolist() == [True] * 8 + [False] + [True] * 3 and latents.shape[0] == 2 * 11
    again, kept_again = encode_photos(paths, TAEF2_DIR, 64, tmp_path / "cache", workers=0)  # from the cache
    assert np.array_equal(again, latents) and np.array_equal(kept_again, kept)
    labels, classes = folder_labels(paths)
    assert classes == ["a", "b"] and labels.tolist() == [0] * 6 + [1] * 6


def test_hybrid_training_adds_a_class_loss_and_starts_from_a_checkpoint(tmp_path, sample_photos):
    paths = _two_classes(tmp_path, sample_photos)
    base = TrainConfig(image_size=64, block_out_channels=(32, 64), batch_size=8, max_steps=2, warmup_steps=1, max_minutes=5)
    run_training(paths, tmp_path / "plain", base, tmp_path / "runs" / "plain", workers=0)
    source = torch.load(tmp_path / "runs" / "plain" / "checkpoint.pt", weights_only=False)

    hybrid = TrainConfig(**{**base.to_dict(), "block_out_channels": (32, 64), "class_weight": 0.5, "max_steps": 0})
    run_training(paths, tmp_path / "hybrid", hybrid, tmp_path / "runs" / "hybrid", workers=0, init_from=tmp_path / "runs" / "plain" / "checkpoint.pt")
    started = torch.load(tmp_path / "runs" / "hybrid" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(started["model"][k], source["ema"][k]) for k in source["ema"])  # began at the EMA weights
    assert started["config"]["num_classes"] == 2
    assert json.loads((tmp_path / "runs" / "hybrid" / "classes.json").read_text()) == ["a", "b"]

    longer = TrainConfig(**{**hybrid.to_dict(), "block_out_channels": (32, 64), "num_classes": 2, "max_steps": 3})
    run_training(paths, tmp_path / "hybrid", longer, tmp_path / "runs" / "hybrid", workers=0, resume=True)
    state = torch.load(tmp_path / "runs" / "hybrid" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and len(state["class_losses"]) == 3 and all(np.isfinite(v) for _, v in state["class_losses"])
    assert state["head"]["linear.weight"].shape == (2, 64)  # classes x mid-block channels
    assert load_model(str(tmp_path / "hybrid")).unet.config.block_out_channels == [32, 64]  # a plain UNet2DModel
    card = write_model_card(tmp_path / "hybrid", tmp_path / "runs" / "hybrid", data_note="11 photos").read_text()
    assert "| steps | 5 at batch 8 |" in card and "2 diffusion-only steps" in card and "2 folder classes" in card


def test_a_run_can_start_from_an_exported_model_folder(tmp_path, sample_photos):
    """Fine-tuning the bundled model: --init takes a model folder (fp16 unet/), not only a checkpoint."""
    paths = _two_classes(tmp_path, sample_photos)
    base = TrainConfig(image_size=64, block_out_channels=(32, 64), batch_size=8, max_steps=2, warmup_steps=1, max_minutes=5)
    run_training(paths, tmp_path / "plain", base, tmp_path / "runs" / "plain", workers=0)
    shipped = load_model(str(tmp_path / "plain")).unet.float().state_dict()

    tuned = TrainConfig(**{**base.to_dict(), "block_out_channels": (32, 64), "class_weight": 0.5, "max_steps": 0})
    run_training(paths, tmp_path / "tuned", tuned, tmp_path / "runs" / "tuned", workers=0, init_from=tmp_path / "plain")
    started = torch.load(tmp_path / "runs" / "tuned" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(started["model"][k], shipped[k]) for k in shipped)  # began at the exported weights
    lineage = json.loads((tmp_path / "runs" / "tuned" / "init.json").read_text())
    assert lineage["steps"] == 2 and len(lineage["losses"]) == 2
    card = write_model_card(tmp_path / "tuned", tmp_path / "runs" / "tuned", data_note="11 photos").read_text()
    assert "| steps | 2 at batch 8 |" in card and "2 diffusion-only steps" in card


def test_class_loss_needs_one_label_per_latent(tmp_path):
    from indexer.training.train import train

    cfg = TrainConfig(image_size=64, block_out_channels=(32, 64), batch_size=2, max_steps=1, class_weight=1.0, num_classes=2)
    with pytest.raises(ValueError, match="one label"):
        train(np.zeros((4, 32, 8, 8), np.float16), cfg, tmp_path, labels=np.array([0, 1]))


def test_views_and_the_self_supervised_term(tmp_path, sample_photos):
    from indexer.training.latents import encode_views
    from indexer.training.train import nt_xent, train

    views, kept = encode_views(sample_photos[:6], TAEF2_DIR, 64, 2, tmp_path / "cache", workers=0)
    assert views.shape == (6, 3, 32, 8, 8) and kept.all()
    assert not np.allclose(views[:, 0], views[:, 1])  # an edited view is not the photo
    again, _ = encode_views(sample_photos[:6], TAEF2_DIR, 64, 2, tmp_path / "cache", workers=0)
    np.testing.assert_array_equal(views, again)  # cached (and seeded)

    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert nt_xent(a, a, 0.1) < nt_xent(a, a.roll(1, 0), 0.1)  # partners that agree cost less

    cfg = TrainConfig(image_size=64, block_out_channels=(32, 64), batch_size=4, ssl_batch=4, ssl_weight=0.5, max_steps=2, warmup_steps=1, max_minutes=5)
    flat = np.asarray(views).reshape(-1, 32, 8, 8)
    train(flat, cfg, tmp_path / "run", views=np.asarray(views))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert len(state["ssl_losses"]) == 2 and all(np.isfinite(l) for _, l in state["ssl_losses"])
    with pytest.raises(ValueError, match="views"):
        train(flat, cfg, tmp_path / "run2")


def test_a_view_recipe_has_its_own_views_and_cache(tmp_path, sample_photos):
    from PIL import Image

    from indexer.training.latents import encode_views
    from indexer.training.views import VIEW_RECIPE_NOTES, VIEW_RECIPES, random_view, recipe_suffix

    assert set(VIEW_RECIPES) >= {"default", "zoom"}
    assert set(VIEW_RECIPE_NOTES) == set(VIEW_RECIPES)  # a model card can name whichever recipe trained it
    with pytest.raises(ValueError, match="unknown view recipe"):
        recipe_suffix("tight")
    default, _ = encode_views(sample_photos[:4], TAEF2_DIR, 64, 2, tmp_path, workers=0)
    zoom, kept = encode_views(sample_photos[:4], TAEF2_DIR, 64, 2, tmp_path, workers=0, recipe="zoom")
    assert kept.all() and len(list(tmp_path.glob("views-*.npy"))) == 2 * 2  # latents + kept flags each
    np.testing.assert_array_equal(default[:, 0], zoom[:, 0])  # the clean photo is the same
    assert not np.allclose(default[:, 1:], zoom[:, 1:])  # its views are not
    image = Image.open(sample_photos[0]).convert("RGB")
    sizes = [random_view(image, np.random.default_rng(i), "zoom").size for i in range(40)]
    areas = [w * h / (image.width * image.height) for w, h in sizes]
    assert min(areas) < 0.4  # zoom crops go tighter than the default's 0.45 of the photo
