"""Tiny ImageNet val, classes no part of the default ever trained on: the latent vs projection files.

    python bench/tiny_unseen.py --tiny DATA/tiny-imagenet-200 [PROJECTION.safetensors ...]

Sets: the 40 held-out wnids (every 5th of the first 200, x 50 val photos: unseen by the U-Net's
training list and by the projection head's) and 160 trained wnids x 10. Rows: the TAEF2 latent
(raw, and PCA-whitened on the clean training views of runs/ssl/photos.txt), the default's mid-block
features through each projection file given (default: the model's bundled one). A quick
complement to bench/generalisation.py, which runs every baseline row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench.generalisation import tiny_val  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder, normalise  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.embedding.projection import FOLDER, Projection, fit_projection  # noqa: E402
from indexer.training.evaluation import encode_set, retrieval_metrics  # noqa: E402
from indexer.training.head import view_features  # noqa: E402
from indexer.training.latents import encode_views  # noqa: E402
from indexer.training.run import TAEF2_DIR  # noqa: E402
from scripts.train_default_model import tiny_wnids  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=Path, required=True)
    parser.add_argument("--photos", type=Path, default=ROOT / "runs" / "ssl" / "photos.txt")
    parser.add_argument("projections", nargs="*", type=Path)
    args = parser.parse_args()
    model = load_model("default")
    options = RuntimeOptions(device="cpu", batch_size=64)
    features = Embedder(EmbeddingConfig(projection=False), options, model=model)
    latent = Embedder(EmbeddingConfig(blocks=("latent",), projection=False), options, model=model)
    files = args.projections or [ROOT / "data" / "models" / "default" / FOLDER / f"{features.config.fingerprint(model.fingerprint)}.safetensors"]
    photos = [Path(p) for p in args.photos.read_text().split("\n") if p]
    views, _ = encode_views(photos, TAEF2_DIR, 128, 2, ROOT / "runs" / "cache")
    clean = view_features(model, latent.config, views[::8, :1], options=options)
    whitening = fit_projection(clean[:, 0], key="latent")
    projections = {f"default U-Net, {file.parent.parent.name}/{file.name}" if file.parent.name == FOLDER else f"default U-Net, {file}": Projection.load(file)
                   for file in files}  # fmt: skip
    trained, held = tiny_wnids(args.tiny)
    print("| set | row | P@1 | P@10 | R@10 | mAP |\n|---|---|---|---|---|---|")
    for name, labelled in (("unseen: 40 held-out classes x 50", tiny_val(args.tiny, held, 50)),
                           ("seen: 160 trained classes x 10", tiny_val(args.tiny, trained, 10))):  # fmt: skip
        x0 = encode_set(model, labelled.paths, 128, ROOT / "runs" / "eval-cache").x0
        raw_latent, raw = latent.pooled_features(x0), features.pooled_features(x0)
        rows = {"TAEF2 latent only": normalise(raw_latent), "TAEF2 latent only, whitened": normalise(whitening.apply(raw_latent))}
        for row, projection in projections.items():
            rows[row] = normalise(projection.apply(raw))
        for row, vectors in rows.items():
            m = retrieval_metrics(vectors, labelled.labels)
            print(f"| {name} | {row} | {m['P@1']:.3f} | {m['P@10']:.3f} | {m['R@10']:.3f} | {m['mAP']:.3f} |")


if __name__ == "__main__":
    main()
