"""Train the default U-Net: diverse photos, diffusion loss + self-supervised edit invariance.

    python scripts/train_default_model.py --tiny DATA/tiny-imagenet-200 [--per-class 100] [--minutes 60]

Data (never committed; see README "Training data"):
- Tiny ImageNet 200 (`github:rangeetpan/IMagenet`, folder tiny-imagenet-200/): the first 200 wnids of
  wnids.txt, minus every 5th (40 classes held out of ALL training, for the unseen-class benchmark),
  `--per-class` photos each, exact duplicate files dropped;
- Caltech-101 fit split (bench/splits/fit.txt) minus the 21 classes of bench/heldout_classes.py.
Stage 1 uses no labels: the classes only decide what is held out.

Steps, each cached or resumable under --run: lists -> TAEF2 latents of each photo and 2 edited views
(indexer.training.views) -> training from scratch (diffusion MSE + NT-Xent on the views' pooled mid
block at t <= 100) with checkpoints -> export to --out.

A hybrid stage continues such a run with a class loss on each photo's folder (240 classes: the 160
Tiny ImageNet wnids and 80 Caltech classes; the held-out ones are not in the list, so they stay
unseen):

    python scripts/train_default_model.py --tiny DATA/tiny-imagenet-200 --photos runs/ssl/photos.txt \
        --run runs/hybrid --out runs/hybrid-model --init runs/ssl/checkpoint.pt \
        --class-weight 0.3 --ssl-weight 0 --batch 64 --steps 4000 --minutes 75
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from indexer.training.evaluation import LabelledSet  # noqa: E402
from indexer.training.latents import encode_views  # noqa: E402
from indexer.training.run import TAEF2_DIR, export_checkpoint, latent_statistics, normalise_latents  # noqa: E402
from indexer.training.train import TrainConfig, train  # noqa: E402
from indexer.training.views import VIEW_RECIPE_NOTES, VIEW_RECIPES  # noqa: E402

from bench.quality import CALTECH, SPLITS  # noqa: E402


def tiny_wnids(tiny: Path) -> tuple[list[str], list[str]]:
    """(trained, held out): the first 200 wnids (the repo adds two of its own), every 5th held out."""
    wnids = (tiny / "wnids.txt").read_text().split()[:200]
    held = wnids[::5]
    return [w for w in wnids if w not in held], held


def caltech_held_out() -> list[str]:
    classes = sorted({line.split("/")[0] for line in (SPLITS / "test.txt").read_text().split()})
    return classes[::5]


def unique_files(paths: list[Path]) -> list[Path]:
    """Drop exact duplicate files (same bytes), keeping the first."""
    seen, out = set(), []
    for path in paths:
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(path)
    return out


def training_photos(tiny: Path, per_class: int) -> list[Path]:
    trained, _ = tiny_wnids(tiny)
    photos = []
    for wnid in trained:
        photos += sorted((tiny / "train" / wnid / "images").glob("*.JPEG"))[:per_class]
    held = set(caltech_held_out())
    photos += [p for p in LabelledSet.from_list(SPLITS / "fit.txt", CALTECH).paths if p.parent.name not in held and p.is_file()]
    return unique_files(photos)


def photo_class(path: Path) -> str:
    """The class a training photo's folder names: Tiny ImageNet's train/<wnid>/images/, Caltech's <class>/."""
    return path.parent.parent.name if path.parent.name == "images" else path.parent.name


def folder_labels(photos: list[Path], kept: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each kept photo's class as an index into the sorted class names, and those names."""
    vocabulary, labels = np.unique([photo_class(p) for p, ok in zip(photos, kept) if ok], return_inverse=True)
    return labels, vocabulary.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=Path, required=True, help="the tiny-imagenet-200 folder")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--view-recipe", default="default", choices=sorted(VIEW_RECIPES),
                        help="the self-supervised term's edited views (indexer.training.views; 'zoom' for crop/re-framing invariance)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--ssl-weight", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--class-weight", type=float, default=0.0,
                        help="hybrid stage: add the class loss on each photo's folder (Tiny ImageNet wnid or Caltech class; held-out classes are not in the list)")
    parser.add_argument("--init", type=Path,
                        help="start a new run from this checkpoint's EMA weights (e.g. runs/ssl/checkpoint.pt) or an exported model folder (e.g. data/models/default)")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate (lower it to fine-tune)")
    parser.add_argument("--photos", type=Path, help="the photo list (default: RUN/photos.txt, made on first use)")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "ssl")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ssl-model")
    parser.add_argument("--encode-only", action="store_true")
    parser.add_argument("--ship", type=Path, help="after training: export here with projection and model card (e.g. data/models/default)")
    parser.add_argument("--card-only", action="store_true", help="with --ship: only rewrite the model card (after the benchmarks)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.run.mkdir(parents=True, exist_ok=True)
    list_file = args.photos or args.run / "photos.txt"
    if not list_file.is_file():
        list_file.write_text("\n".join(map(str, training_photos(args.tiny, args.per_class))) + "\n")
    photos = [Path(p) for p in list_file.read_text().split("\n") if p]
    logging.info("%d training photos (%s)", len(photos), list_file)
    views, kept = encode_views(photos, TAEF2_DIR, 128, args.views, ROOT / "runs" / "cache", recipe=args.view_recipe)
    if args.encode_only:
        return
    clean = np.asarray(views[:, 0])
    mean, std = latent_statistics(clean)
    normed = np.stack([normalise_latents(np.asarray(views[:, v]), mean, std) for v in range(views.shape[1])], axis=1)
    (args.run / "stats.json").write_text(json.dumps({"latent_mean": mean, "latent_std": std, "photos": int(kept.sum())}))
    flat = normed.reshape(-1, *normed.shape[2:])  # every view is a training image for the diffusion loss
    labels, classes = None, 0
    if args.class_weight > 0:
        per_photo, vocabulary = folder_labels(photos, kept)
        labels, classes = np.repeat(per_photo, normed.shape[1]), len(vocabulary)
        logging.info("hybrid stage: %d classes, class weight %g", classes, args.class_weight)
    cfg = TrainConfig(max_minutes=args.minutes, max_steps=args.steps, batch_size=args.batch, ssl_weight=args.ssl_weight,
                      class_weight=args.class_weight, num_classes=classes, checkpoint_every=100, lr=args.lr)  # fmt: skip
    train(flat, cfg, args.run, resume=True, views=normed, labels=labels, init_from=args.init)
    export_checkpoint(args.run, args.out)
    (args.run / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=list))
    print(f"exported {args.out}")
    if args.ship:
        label_note = FOLDER_LABELS if args.class_weight > 0 else NO_LABELS
        ship(args.run, args.ship, photos, args.per_class, label_note, card_only=args.card_only, recipe=args.view_recipe)


DATA_NOTE = (
    "{photos:,} photos: Tiny ImageNet 200 train (`github:rangeetpan/IMagenet` at 6125d8a, "
    "the first 200 wnids of wnids.txt minus every 5th, {per_class} photos each, exact duplicate files dropped) "
    "and the Caltech-101 fit split minus 21 held-out classes (every 5th of the test split's classes); {labels}"
)
NO_LABELS = "no labels"
FOLDER_LABELS = (
    "the hybrid stage and the class-discriminant part of the projection use their folders as labels "
    "(240 classes: 160 wnids, 80 Caltech classes); no held-out class is in the list"
)
VIEWS_NOTE = "each photo centre-cropped plus 2 edited views: crops, re-framing, tilt, flip, colour, grayscale, blur, banner, border, JPEG"
LICENCES = (
    "The training photos are Caltech-101 (CC BY 4.0) and Tiny ImageNet (a subset of ImageNet, whose "
    "terms allow non-commercial research and educational use; the photos are not redistributed here)."
)


def ship(run: Path, out: Path, photos: list[Path], per_class: int, labels: str, card_only: bool = False, recipe: str = "default") -> None:
    """The run as the bundled model: weights, licence, PCA-whitening learned on training photos, card."""
    import shutil

    from scripts.ship_default_model import LICENSE, fit_default_projection

    if card_only:
        write_card(run, out, photos, per_class, labels, recipe)
        return
    if out.exists():
        shutil.rmtree(out)
    export_checkpoint(run, out)
    (out / "LICENSE").write_text(LICENSE.replace("The training photos (Caltech-101", "The training photos (Caltech-101 and Tiny ImageNet; the latter's terms are non-commercial research use").replace(") are CC BY 4.0", "; Caltech-101 is CC BY 4.0)"))
    fit_default_projection(out, photos[:: max(1, len(photos) // 1500)][:1500])
    write_card(run, out, photos, per_class, labels, recipe)
    print(f"shipped {out}")


def write_card(run: Path, out: Path, photos: list[Path], per_class: int, labels: str, recipe: str = "default") -> None:
    from indexer.training.card import write_model_card

    extra = ""
    results = ROOT / "bench" / "results"
    for name in ("near-duplicates.md", "generalisation.md"):
        if (results / name).is_file():
            extra += "\n" + (results / name).read_text()
    write_model_card(out, run, DATA_NOTE.format(photos=len(photos), per_class=per_class, labels=labels), extra=extra,
                     views_note=VIEWS_NOTE + (f"; the last stage's views are {VIEW_RECIPE_NOTES[recipe]}" if VIEW_RECIPE_NOTES[recipe] else ""),
                     licences=LICENCES)  # fmt: skip


if __name__ == "__main__":
    main()
