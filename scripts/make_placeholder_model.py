"""Write a randomly initialised default model (a placeholder until a trained U-Net is exported).

Latent statistics come from the bundled sample photos. Its model card says it is untrained.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.images import prepare  # noqa: E402
from indexer.embedding.taef2 import load_encoder  # noqa: E402
from indexer.training.run import TAEF2_DIR, export_model, latent_statistics  # noqa: E402
from indexer.training.train import TrainConfig, build_unet  # noqa: E402


def main(out: Path = ROOT / "data" / "models" / "default") -> None:
    cfg = TrainConfig()
    torch.manual_seed(cfg.seed)
    photos = sorted((ROOT / "data" / "samples").glob("*.jpg"))
    pixels = torch.stack([prepare(p, cfg.image_size) for p in photos])
    with torch.no_grad():
        latents = load_encoder(TAEF2_DIR)(pixels).numpy()
    mean, std = latent_statistics(latents)
    export_model(build_unet(cfg), cfg, mean, std, out, {"photos": len(photos), "steps": 0, "placeholder": True})
    (out / "README.md").write_text(
        "# PLACEHOLDER default model: randomly initialised, NOT trained\n\n"
        "Made by scripts/make_placeholder_model.py so the code paths work before training lands.\n"
    )


if __name__ == "__main__":
    main()
