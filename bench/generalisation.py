"""Seen and unseen classes, one run: does the default generalise beyond what it was trained on?

    python bench/generalisation.py --tiny DATA/tiny-imagenet-200 [--previous runs/previous-default] [--candidate data/models/default]

Sets (classes held out exactly as scripts/train_default_model.py holds them out of ALL training):
- unseen: Tiny ImageNet val photos of the 40 held-out wnids; Caltech-101 test photos of the 21
  held-out classes (bench/heldout_classes.py);
- seen: Caltech-101 test (all 101 classes); Tiny ImageNet val of the 160 trained wnids
  (--per-class of each).
Rows: colour histogram, the TAEF2 latent in both poolings, a random-init U-Net, the last release's
default (`--previous`, default: the shipped model) and the candidate. Every row except the histogram
is PCA-whitened on the same photos (from the training list, so no evaluated class leaks in), and the
models are also measured "as indexed" (their bundled projection). Labels only score the retrieval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig  # noqa: E402
from indexer.training.evaluation import LabelledSet, Variant, evaluate, markdown_table, random_unet_model  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from scripts.train_default_model import caltech_held_out, tiny_wnids  # noqa: E402
from searcher.searcher import MIRROR_MAX_DISTANCE  # noqa: E402

BASE = "latent only, same pipeline (no U-Net)"


def tiny_val(tiny: Path, wnids: list[str], per_class: int) -> LabelledSet:
    wanted = set(wnids)
    lines, counts = [], {w: 0 for w in wnids}
    for line in (tiny / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        if wnid in wanted and counts[wnid] < per_class:
            counts[wnid] += 1
            lines.append((tiny / "val" / "images" / name, wnid))
    return LabelledSet._build([p for p, _ in lines], [w for _, w in lines])


def caltech_test(classes: set[str] | None) -> LabelledSet:
    lines = [ln for ln in (SPLITS / "test.txt").read_text().split() if classes is None or ln.split("/")[0] in classes]
    return LabelledSet.from_lines(lines, CALTECH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=Path, required=True)
    parser.add_argument("--candidate", type=Path)
    parser.add_argument("--candidate-name", default="new default", help="how the candidate's rows are named")
    parser.add_argument("--previous", default="default", help="the last release's model folder")
    parser.add_argument("--previous-blocks", default="mid", help="the blocks the last release embedded with (comma-separated)")
    parser.add_argument("--fit-list", type=Path, default=ROOT / "runs" / "ssl" / "photos.txt")
    parser.add_argument("--per-class", type=int, default=20, help="Tiny ImageNet val photos per seen class")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generalisation.json")
    args = parser.parse_args()
    trained, held = tiny_wnids(args.tiny)
    sets = {
        "unseen: Tiny ImageNet val, 40 held-out classes": tiny_val(args.tiny, held, 50),
        "unseen: Caltech-101 test, 21 held-out classes": caltech_test(set(caltech_held_out())),
        "seen: Caltech-101 test, all 101 classes": caltech_test(None),
        f"seen: Tiny ImageNet val, 160 trained classes ({args.per_class} each)": tiny_val(args.tiny, trained, args.per_class),
    }
    fit_all = [Path(p) for p in args.fit_list.read_text().split("\n") if p]
    fit = fit_all[:: max(1, len(fit_all) // 1500)][:1500]
    previous = load_model(args.previous)
    chosen = EmbeddingConfig()
    released = EmbeddingConfig(blocks=tuple(args.previous_blocks.split(",")))  # how the last release embedded
    whiten = {"whiten": True}
    variants = [
        Variant("colour histogram 8x8x8"),
        Variant(BASE, chosen.replace(blocks=("latent",)), previous, **whiten),
        Variant("latent only, 4x4 grid, no global mean (its best pooling)", chosen.replace(blocks=("latent",), grid=4, gap=False), previous, **whiten),
        Variant("random-init U-Net, same pipeline", chosen, random_unet_model(previous), **whiten),
        Variant("last release's default, whitened here", released, previous, **whiten),
    ]
    if released.replace(projection=False).fingerprint(previous.fingerprint) in previous.projections:
        variants.append(Variant("last release's default, as indexed", released, previous, as_indexed=True))
    if args.candidate:
        candidate = load_model(str(args.candidate))
        random_row = variants[3]
        variants[3] = dataclasses.replace(random_row, model=random_unet_model(candidate))
        name = args.candidate_name
        configs = {"mid block alone": chosen.replace(blocks=("mid",)), "latent + mid": chosen.replace(blocks=("latent", "mid"))}
        variants += [Variant(f"{name}, {label}, whitened here", config, candidate, **whiten) for label, config in configs.items()]
        indexed = [(label, config) for label, config in configs.items() if config.replace(projection=False).fingerprint(candidate.fingerprint) in candidate.projections]
        variants += [Variant(f"{name}, {label}, as indexed", config, candidate, as_indexed=True) for label, config in indexed]
        # As `Searcher.query` searches by default (what the query's mirror finds within MIRROR_MAX_DISTANCE
        # counts too), at any distance (why it does not), and the latent alone searched as the default.
        for label, config in indexed:
            if config == chosen:
                variants += [Variant(f"{name}, {label}, as searched (+ mirror within {MIRROR_MAX_DISTANCE})", config, candidate,
                                     as_indexed=True, mirror_within=MIRROR_MAX_DISTANCE),
                             Variant(f"{name}, {label}, + mirror at any distance", config, candidate, as_indexed=True, mirror_within=np.inf)]  # fmt: skip
        latent = next(v for v in variants if v.name == BASE)
        variants.append(dataclasses.replace(latent, name=f"{BASE}, + mirror within {MIRROR_MAX_DISTANCE}", mirror_within=MIRROR_MAX_DISTANCE))
    report = {}
    for name, labelled in sets.items():
        results = evaluate(variants, labelled, fit, ROOT / "runs" / "eval-cache")
        print(f"\n### {name}: {len(labelled.paths)} queries, {len(labelled.classes)} classes\n")
        print(markdown_table(results, baseline=BASE), flush=True)
        report[name] = [dataclasses.asdict(r) for r in results]
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
