"""Choose the default's timestep and DDIM inversion steps on the validation split (never tested on).

    python bench/inversion_sweep.py --model runs/ssl-model [--fit-list runs/ssl/photos.txt]

Caltech-101 val (every 5th train photo per class; not in any training list): class-level P@10 and
mAP, and near-duplicate recall@1 of 100 val originals x the 10 edits among all val photos, for
t in {20, 50, 100} x k in {0, 1, 2}. Whitening is fitted on training photos for every row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.near_duplicates import encode_queries, recall, same_photo  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig  # noqa: E402
from indexer.training.evaluation import LabelledSet, Variant, encode_set, retrieval_metrics, variant_vectors  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.training.views import EDITS  # noqa: E402

CACHE = ROOT / "runs" / "eval-cache"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--fit-list", type=Path, default=ROOT / "runs" / "ssl" / "photos.txt")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inversion-sweep.json")
    args = parser.parse_args()
    model = load_model(args.model)
    val = LabelledSet.from_list(SPLITS / "val.txt", CALTECH)
    fit_all = [Path(p) for p in args.fit_list.read_text().split("\n") if p]
    fit = encode_set(model, fit_all[:: max(1, len(fit_all) // 1500)][:1500], 128, CACHE)
    gallery = encode_set(model, val.paths, 128, CACHE)
    picked = np.sort(np.random.default_rng(0).choice(len(val.paths), 100, replace=False))
    queries = encode_queries(model, [val.paths[i] for i in picked], 0)
    originals = np.repeat(picked, len(EDITS))
    rows = []
    print("| t | k | P@10 | mAP | near-dup R@1 |\n|---|---|---|---|---|")
    for t in (20, 50, 100):
        for k in (0, 1, 2):
            config = EmbeddingConfig(timestep=t, inversion_steps=k)
            variant = Variant(f"t={t} k={k}", config, model, whiten=True)
            g = variant_vectors(variant, gallery, fit)
            from indexer.training.evaluation import EncodedSet

            q = variant_vectors(variant, EncodedSet(queries, np.zeros((len(queries), 1), np.float32)), fit)
            metrics = retrieval_metrics(g, val.labels)
            d = np.sqrt(np.maximum(2 - 2 * q @ g.T, 0))
            r1 = float(recall(d, originals, same_photo(val.paths))["R@1"].mean())
            rows.append({"timestep": t, "inversion_steps": k, "P@10": metrics["P@10"], "mAP": metrics["mAP"], "near_dup_R@1": r1})
            print(f"| {t} | {k} | {metrics['P@10']:.4f} | {metrics['mAP']:.4f} | {r1:.4f} |", flush=True)
    best = max((r for r in rows if r["inversion_steps"] >= 1), key=lambda r: r["P@10"] + r["mAP"] + r["near_dup_R@1"])
    print(f"\nchosen (k >= 1, best P@10 + mAP + near-dup R@1): t={best['timestep']} k={best['inversion_steps']}")
    args.out.write_text(json.dumps({"rows": rows, "chosen": best}, indent=2))


if __name__ == "__main__":
    main()
