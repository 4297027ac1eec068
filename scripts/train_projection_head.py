"""Train a model's contrastive projection head and save it as the projection for an embedding config.

    python scripts/train_projection_head.py --model data/models/default [--photos runs/ssl/photos.txt]

The photos (default: the list scripts/train_default_model.py trains the U-Net on, which holds out
every evaluated class) are encoded once with 2 edited views each per `--view-recipes` recipe
(indexer.training.views, cached under runs/cache), the U-Net runs frozen over every view as search
runs it (DDIM inversion, block capture, pooling), and indexer.training.head learns the linear map
on top. It is written to `MODEL/projections/<fingerprint of the config with projection
off>.safetensors`, where the Embedder finds it, replacing the PCA-whitening stored there for that
config.

With `--class-dim N`, N class-discriminant (LDA) directions, fitted on the clean photos' folder
classes (indexer.training.discriminant; held-out classes are not in the list), are stacked beside
the head with `--class-weight` say. `--dim 0` skips the contrastive head (PCA-whitening to
`--keep-whitening` dims instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.embedding.config import EmbeddingConfig  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.embedding.projection import fit_projection  # noqa: E402
from indexer.training.discriminant import DiscriminantConfig, fit_discriminant_projection  # noqa: E402
from indexer.training.head import HeadConfig, cached_view_features, fit_contrastive_projection, stack_projections  # noqa: E402
from indexer.training.latents import encode_views  # noqa: E402
from indexer.training.run import TAEF2_DIR  # noqa: E402
from indexer.training.views import VIEW_RECIPES  # noqa: E402
from scripts.train_default_model import folder_labels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--photos", type=Path, default=ROOT / "runs" / "ssl" / "photos.txt", help="one path per line")
    parser.add_argument("--config", default="{}", help="embedding settings as JSON over the defaults")
    parser.add_argument("--dim", type=int, default=128, help="learned contrastive dims (0: none, PCA-whitening only)")
    parser.add_argument("--keep-whitening", type=int, default=128)
    parser.add_argument("--learned-weight", type=float, default=0.7, help="the learned part's say against the kept whitening's")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--views", type=int, default=2, help="edited views per photo and recipe")
    parser.add_argument("--view-recipes", nargs="+", default=["default"], choices=sorted(VIEW_RECIPES),
                        help="indexer.training.views recipes the head learns from (each adds --views views per photo)")
    parser.add_argument("--class-dim", type=int, default=0, help="class-discriminant (LDA) dims stacked beside (0: none)")
    parser.add_argument("--class-weight", type=float, default=1.0, help="the discriminant part's say against the rest's")
    parser.add_argument("--class-whiten-dim", type=int, default=DiscriminantConfig.whiten_dim)
    parser.add_argument("--class-reg", type=float, default=DiscriminantConfig.reg)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = EmbeddingConfig.from_dict(json.loads(args.config)).replace(projection=False)
    photos = [Path(p) for p in args.photos.read_text().split("\n") if p]
    model = load_model(str(args.model))
    parts, kept = [], None
    for recipe in args.view_recipes:  # the clean photo once, then every recipe's edited views
        views, kept = encode_views(photos, TAEF2_DIR, config.image_size, args.views, ROOT / "runs" / "cache", recipe=recipe)
        features = cached_view_features(model, config, views, ROOT / "runs" / "head", recipe=recipe)
        parts.append(features if not parts else features[:, 1:])
    features = np.concatenate(parts, axis=1)
    key = config.fingerprint(model.fingerprint)
    if args.dim:
        head = fit_contrastive_projection(features, key=key,
                                          cfg=HeadConfig(dim=args.dim, keep_whitening=args.keep_whitening, learned_weight=args.learned_weight, steps=args.steps))  # fmt: skip
    else:
        head = fit_projection(features[:, 0], key=key, dim=args.keep_whitening)
    if args.class_dim:
        lda = fit_discriminant_projection(features[:, 0], folder_labels(photos, kept)[0], key=key,
                                          cfg=DiscriminantConfig(dim=args.class_dim, whiten_dim=args.class_whiten_dim, reg=args.class_reg))  # fmt: skip
        head = stack_projections([(head, 1.0), (lda, args.class_weight)], features[:2000, 0], key=key)
    if args.dim and head.dim > args.dim:  # dedup compares photos on the learned, edit-invariant dims alone
        head = replace(head, instance_dims=(args.keep_whitening, args.keep_whitening + args.dim))
    print(f"projection head for {config.to_dict()}: {head.save(args.model)}")


if __name__ == "__main__":
    main()
