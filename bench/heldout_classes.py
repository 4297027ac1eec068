"""Do the hybrid U-Net's features help on classes whose labels it never saw?

The default U-Net's second stage learns from Caltech-101 folder labels (see indexer/training/train.py).
Test photos share those classes, so the main benchmark cannot tell a learned notion of "what is
in the photo" from memorised classes. This benchmark holds out every 5th object class (21 of 101):
their photos are dropped from the hybrid stage entirely, and retrieval is then measured among
test photos of those unseen classes only, against the latent-only pipeline, in one run.

    python bench/heldout_classes.py            # trains runs/heldout (~40 CPU-min) unless done, then evaluates

Same recipe as the default: start from the diffusion-only checkpoint (runs/default, which saw all
photos without labels, as a user's own unlabelled photos would be), class weight 0.3, up to 3,000
hybrid steps within --minutes of wall time (the committed result stopped at the time limit; the
step count is in its header). Rerunning resumes the run: a larger --minutes trains it further.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.quality import CALTECH, SPLITS, whitening_photos  # noqa: E402
from indexer.embedding.config import EmbeddingConfig  # noqa: E402
from indexer.training.evaluation import BASELINE, LATENT_GRID_ROW, LabelledSet, Variant, evaluate, markdown_table  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.training.latents import encode_photos, read_list  # noqa: E402
from indexer.training.run import TAEF2_DIR, export_checkpoint, folder_labels, normalise_latents  # noqa: E402
from indexer.training.train import TrainConfig, train  # noqa: E402


def held_out_classes() -> list[str]:
    classes = sorted({line.split("/")[0] for line in (SPLITS / "test.txt").read_text().split()})
    return classes[::5]


def train_without(held_out: list[str], run_dir: Path, out: Path, init_from: Path, cfg: TrainConfig) -> None:
    photos = read_list(SPLITS / "fit.txt", CALTECH)
    latents, kept = encode_photos(photos, TAEF2_DIR, cfg.image_size, ROOT / "runs" / "cache")
    stats = json.loads((init_from.parent / "stats.json").read_text())  # the first stage's normalisation
    labels, classes = folder_labels(photos)
    labels = np.concatenate([labels[kept], labels[kept]])
    seen = ~np.isin(np.array(classes)[labels], held_out)
    # Re-number the seen classes 0..n-1 so the head has no outputs for the unseen ones.
    seen_ids = {c: i for i, c in enumerate(sorted(set(np.array(classes)[labels[seen]])))}
    targets = np.array([seen_ids[classes[c]] for c in labels[seen]])
    normed = normalise_latents(latents[seen], stats["latent_mean"], stats["latent_std"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stats.json").write_text(json.dumps({**stats, "held_out": held_out}))
    train(normed, dataclasses.replace(cfg, num_classes=len(seen_ids)), run_dir, resume=True, labels=targets, init_from=init_from)
    export_checkpoint(run_dir, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init-from", type=Path, default=ROOT / "runs" / "default" / "checkpoint.pt")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "heldout")
    parser.add_argument("--minutes", type=float, default=45.0)
    parser.add_argument("--config", help="JSON embedding config (default: the one in bench/results/sweep-val.json)")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "eval-cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    held_out = held_out_classes()
    model_dir = args.run.parent / (args.run.name + "-model")
    cfg = TrainConfig(max_steps=3000, max_minutes=args.minutes, class_weight=0.3)
    started = time.time()
    train_without(held_out, args.run, model_dir, args.init_from, cfg)

    chosen = json.loads(args.config) if args.config else json.loads((ROOT / "bench" / "results" / "sweep-val.json").read_text())["chosen"]
    config = EmbeddingConfig.from_dict(chosen)
    unet_blocks = tuple(b for b in config.blocks if b != "latent") or ("mid",)
    model = load_model(str(model_dir))
    lines = (SPLITS / "test.txt").read_text().split()
    fit = whitening_photos()
    whiten = {"whiten": config.projection}
    steps = json.loads((args.run / "progress.json").read_text())["step"]
    out = {"held_out": held_out, "hybrid_steps": steps, "config": config.to_dict(), "tables": {}}
    report = [f"Held-out classes ({len(held_out)}, never labelled in training): {', '.join(held_out)}",
              f"Hybrid stage: {steps} steps on the other classes' photos, from {args.init_from}."]  # fmt: skip
    for name, keep in (("unseen classes", True), ("seen classes", False)):
        subset = [ln for ln in lines if (ln.split("/")[0] in held_out) == keep]
        labelled = LabelledSet.from_lines(subset, CALTECH)
        variants = [
            Variant(BASELINE, config.replace(blocks=("latent",)), model, **whiten),
            Variant(LATENT_GRID_ROW, config.replace(blocks=("latent",), grid=4, gap=False), model, **whiten),
            Variant("hybrid U-Net, chosen config", config.replace(blocks=unet_blocks), model, **whiten),
            Variant("hybrid U-Net + latent, weight 1", config.replace(blocks=("latent",) + unet_blocks, unet_weight=1.0), model, **whiten),
        ]
        results = evaluate(variants, labelled, fit, args.cache)
        table = markdown_table(results, baseline=BASELINE)
        report.append(f"\n{name} of the test split: {len(subset)} queries, {len(labelled.classes)} classes\n\n{table}")
        out["tables"][name] = [dataclasses.asdict(r) for r in results]
    text = "\n".join(report) + f"\n\n({time.time() - started:.0f} s, config {json.dumps(config.to_dict())})"
    print(text)
    (ROOT / "bench" / "results" / "heldout-classes.md").write_text(text + "\n")
    (ROOT / "bench" / "results" / "heldout-classes.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
