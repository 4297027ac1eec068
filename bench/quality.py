"""Caltech-101 retrieval benchmark: the ablation table in one run, and the hyper-parameter sweep.

    python bench/quality.py --split val --sweep            # choose settings on the validation split
    python bench/quality.py --split test --with-256        # report once on test, baselines included

Splits come from scripts/caltech_splits.py (val = every 5th train photo per class; the U-Net
trains on the rest). Prints a Markdown table and writes JSON beside it.
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

import torch  # noqa: E402

from indexer.embedding.config import EmbeddingConfig  # noqa: E402
from indexer.training.evaluation import BASELINE, LabelledSet, Variant, ablation, evaluate, markdown_table  # noqa: E402
from indexer.embedding.model import DiffusionModel, load_model  # noqa: E402

CALTECH = ROOT.parent / "shared" / "data" / "caltech101" / "101_ObjectCategories"
SPLITS = ROOT / "bench" / "splits"
FIT_SUBSET = 1500  # fit-split photos the PCA-whitening is learned on (same for every variant)


def whitening_photos() -> list[Path]:
    """FIT_SUBSET photos spread evenly over the fit split: what every variant's PCA-whitening learns on."""
    fit = LabelledSet.from_list(SPLITS / "fit.txt", CALTECH, skip=()).paths
    return fit[:: max(1, len(fit) // FIT_SUBSET)][:FIT_SUBSET]


def sweep(trained: DiffusionModel, labelled: LabelledSet, fit: list[Path], cache: Path) -> EmbeddingConfig:
    """Greedy coordinate search on the validation split, P@10 decides: blocks, U-Net weight, t, pooling, k, whitening.

    The latent-only row is always a candidate, so the sweep can conclude that the U-Net does not
    help (and then the table says so). Whitening is on from the start (it won every earlier sweep)
    and switched off once at the end to check.
    """
    log: list[tuple[str, dict]] = []
    keys = ("blocks", "unet_weight", "timestep", "inversion_steps", "grid", "gap", "projection")

    def run(candidates: list[EmbeddingConfig], best_so_far: tuple[EmbeddingConfig, float] | None = None) -> tuple[EmbeddingConfig, float]:
        variants = [Variant(json.dumps({k: v for k, v in c.to_dict().items() if k in keys}), c, trained,
                            whiten=c.projection, whiten_shrinkage=5.0) for c in candidates]  # fmt: skip
        results = evaluate(variants, labelled, fit, cache)
        scored = [(c, r.metrics["P@10"]) for c, r in zip(candidates, results)]
        for r in results:
            log.append((r.name, r.metrics))
            print(f"  P@10 {r.metrics['P@10']:.4f}  mAP {r.metrics['mAP']:.4f}  {r.name}", flush=True)
        if best_so_far is not None:
            scored.append(best_so_far)
        return max(scored, key=lambda item: item[1])

    base = EmbeddingConfig(blocks=("latent", "mid"), unet_weight=0.5, timestep=100, inversion_steps=0, grid=4, gap=False, projection=True)
    blocks = [("latent",), ("mid",), ("latent", "mid"), ("latent", "up.0"), ("latent", "up.1"), ("latent", "down.2"), ("mid", "up.0"), ("latent", "mid", "up.0"), ("latent", "x0")]
    best = run([base.replace(blocks=b) for b in blocks])
    if best[0].uses_unet and "latent" in best[0].blocks:
        best = run([best[0].replace(unet_weight=w) for w in (0.25, 1.0, 2.0, 4.0) if w != best[0].unet_weight], best)
    if best[0].uses_unet:
        best = run([best[0].replace(timestep=t) for t in (20, 50, 200, 400) if t != best[0].timestep], best)
    best = run([best[0].replace(grid=g, gap=gap) for g, gap in ((4, True), (2, True), (1, False), (3, False))], best)
    if best[0].uses_unet:
        best = run([best[0].replace(inversion_steps=k) for k in (1, 2) if best[0].timestep % k == 0], best)
    best = run([best[0].replace(projection=False)], best)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "sweep-val.json").write_text(json.dumps({"chosen": best[0].to_dict(), "val_P@10": best[1], "runs": log}, indent=2))
    return best[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--model", default="default", help="trained model folder (default: the bundled one)")
    parser.add_argument("--config", help="JSON embedding config to report (default: the model's recommended or EmbeddingConfig())")
    parser.add_argument("--sweep", action="store_true", help="choose the config on this split first")
    parser.add_argument("--with-256", action="store_true", help="add the 256px TAEF2-latent reference row (slow: 6 img/s)")
    parser.add_argument("--stage-one", help="model folder of the U-Net before its hybrid stage, for one more ablation row")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "eval-cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    started = time.time()
    labelled = LabelledSet.from_list(SPLITS / f"{args.split}.txt", CALTECH)
    fit = whitening_photos()
    trained = load_model(args.model)
    if args.config:
        chosen = EmbeddingConfig.from_dict(json.loads(args.config))  # unnamed settings keep their defaults
    else:
        chosen = EmbeddingConfig()
    if args.sweep:
        chosen = sweep(trained, labelled, fit, args.cache)
        print("chosen:", json.dumps(chosen.to_dict()))
    stage_one = load_model(args.stage_one) if args.stage_one else None
    results = evaluate(ablation(chosen, trained, args.with_256, stage_one), labelled, fit, args.cache)
    table = markdown_table(results, baseline=BASELINE)
    header = f"Caltech-101 {args.split} split: {len(labelled.paths)} queries, {len(labelled.classes)} classes, Euclidean; model {args.model}; config {json.dumps(chosen.to_dict())}"
    print(header + "\n\n" + table + f"\n\n({time.time() - started:.0f} s)")
    out = args.out or ROOT / "bench" / "results" / f"quality-{args.split}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"header": header, "config": chosen.to_dict(), "results": [dataclasses.asdict(r) for r in results]}, indent=2))


if __name__ == "__main__":
    main()
