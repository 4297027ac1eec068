"""Export the trained default model into data/models/default with its model card.

    python scripts/ship_default_model.py [--run runs/default]

Reads the run's latest checkpoint (EMA weights), writes fp16 safetensors + scheduler + manifest,
then the model card with the loss curve, a sample grid, and the evaluation tables found in
bench/results/ (quality-test.json, sweep-val.json).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.training.evaluation import BASELINE  # noqa: E402
from indexer.training.card import write_model_card  # noqa: E402
from indexer.training.run import export_checkpoint  # noqa: E402

LICENSE = """MIT License

Copyright (c) 2026 the diffsearch authors

Permission is hereby granted, free of charge, to any person obtaining a copy of these model
weights and associated files (the "Model"), to deal in the Model without restriction, including
without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or
sell copies of the Model, and to permit persons to whom the Model is furnished to do so, subject
to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Model.

THE MODEL IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE MODEL OR THE USE OR OTHER DEALINGS IN THE MODEL.

The training photos (Caltech-101, Fei-Fei, Fergus, Perona 2004) are CC BY 4.0; the weights were
learned from them. TAEF2 (../taef2/) is MIT, see its own LICENSE.
"""


RECIPE = """## Training recipe: why two stages

Stage 1 is plain latent diffusion (noise prediction). Its U-Net learned to denoise, and its
features improved with training, but they never beat the TAEF2 latent they were computed from
(test P@10 0.444 alone; fused with the latent 0.544 vs 0.546 without the U-Net). Denoising
small 16x16 latents can be done well from local texture; nothing forces the network to work out
what the photo shows.

Stage 2 continues from stage 1's EMA weights with one more term: a linear head on the globally
pooled mid block predicts each photo's class (its Caltech-101 folder; 102 with BACKGROUND_Google) from the same noisy forward
pass that predicts the noise, and its cross-entropy, weighted by alpha_bar(t) (how much photo is
left under the noise), is added to the noise MSE (weight 0.3). This is the hybrid
generative-discriminative recipe of HybViT (Yang and Ji, 2022) on a U-Net. The noise loss kept
falling through stage 2 (mean of the last 200 steps: 0.384 after stage 1, 0.372 after stage 2),
so the model stays a diffusion model; the head is thrown
away, and search pools the mid block exactly as before.

Caveat: the labels are those of Caltech-101's 101 classes, and the test split has the same
classes. `bench/heldout_classes.py` measures what carries over to classes whose labels the U-Net
never saw (`bench/results/heldout-classes.md`): on 21 held-out classes P@10 is level with the
latent (0.774 vs 0.779; 0.786 fused with it) while mAP rises from 0.612-0.624 to 0.671; on the 80
seen classes P@10 goes from 0.537 to 0.664. Most of the top-10 gain is knowledge of the trained classes; what transfers is a better
ordering of the whole collection.
"""


def results_section() -> str:
    parts = [RECIPE]
    test = ROOT / "bench" / "results" / "quality-test.json"
    if test.is_file():
        data = json.loads(test.read_text())
        from indexer.training.evaluation import EvalResult, markdown_table

        rows = [EvalResult(**r) for r in data["results"]]
        parts.append("## Retrieval quality (Caltech-101 test split, reported once)\n\n" + data["header"] + "\n\n"
                     + markdown_table(rows, baseline=BASELINE))  # fmt: skip
    sweep = ROOT / "bench" / "results" / "sweep-val.json"
    if sweep.is_file():
        data = json.loads(sweep.read_text())
        chosen = data["chosen"]
        if "decision" in data:
            parts.append("**Verdict.** " + data["decision"])
        parts.append("Embedding settings chosen on the validation split (every 5th train photo per class, "
                     f"never trained on): `{json.dumps(chosen)}`. Full sweep: `bench/results/sweep-val.json`.")  # fmt: skip
    return "\n\n".join(parts)


def fit_default_projection(model_dir: Path, photos: list[Path] | None = None) -> None:
    """PCA-whitening for the default embedding config, learned on `photos` (default: the fit-split photos of bench/quality.py)."""
    from bench.quality import whitening_photos
    from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
    from indexer.embedding.embedder import Embedder
    from indexer.training.evaluation import encode_set
    from indexer.embedding.model import load_model
    from indexer.embedding.projection import fit_projection

    config = EmbeddingConfig()
    if not config.projection:
        return
    model = load_model(str(model_dir))
    fit = photos if photos is not None else whitening_photos()
    raw_config = config.replace(projection=False)
    embedder = Embedder(raw_config, RuntimeOptions(device="cpu", batch_size=64), model=model)
    features = embedder.pooled_features(encode_set(model, fit, config.image_size, ROOT / "runs" / "eval-cache").x0)
    path = fit_projection(features, key=raw_config.fingerprint(model.fingerprint)).save(model_dir)
    print(f"projection for the default config: {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "models" / "default")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    export_checkpoint(args.run, args.out)
    (args.out / "LICENSE").write_text(LICENSE)
    fit_default_projection(args.out)
    note = ("Caltech-101 train split minus the validation split: bench/splits/fit.txt, 4,894 readable photos "
            "(never test); their folder names are the class labels of the hybrid stage")  # fmt: skip
    write_model_card(args.out, args.run, data_note=note, extra=results_section())
    print(f"shipped {args.out}")


if __name__ == "__main__":
    main()
