"""Does a contrastive projection head (indexer.training.head) beat PCA-whitening, and at what cost?

    python bench/projection_head.py [--model default] [--blocks mid] [--photos runs/ssl/photos.txt]

One run, one model, one embedding config (the default's, with `--blocks` as given): pooled features
of the training photos' views (the U-Net's training list, which holds out every evaluated class;
2 edited views each) train the projections; the rows are scored on Caltech-101 test (P@10/mAP over
all 101 classes and over the 21 held-out ones) and on bench/near_duplicates.py's queries (300
originals x 10 edits, seed 0; recall@1 per edit and overall, dedup calibration). Rows:
- the model exactly as indexed today (its bundled projection);
- PCA-whitening fitted on the clean views;
- the head alone (256 learned dims, started at the whitening);
- the head with kept whitening (128 + 128 dims: what scripts/train_projection_head.py ships).
Features are cached under runs/head/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.near_duplicates import calibrate, encode_queries, recall, same_photo  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder, normalise  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.embedding.projection import Projection, fit_projection  # noqa: E402
from indexer.training.evaluation import LabelledSet, encode_set, retrieval_metrics  # noqa: E402
from indexer.training.head import HeadConfig, cached_view_features, fit_contrastive_projection  # noqa: E402
from indexer.training.latents import encode_views  # noqa: E402
from indexer.training.run import TAEF2_DIR  # noqa: E402
from indexer.training.views import EDITS  # noqa: E402
from scripts.train_default_model import caltech_held_out  # noqa: E402

CACHE = ROOT / "runs" / "head"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--blocks", nargs="+", default=list(EmbeddingConfig().blocks))
    parser.add_argument("--photos", type=Path, default=ROOT / "runs" / "ssl" / "photos.txt")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "projection-head.json")
    args = parser.parse_args()
    model = load_model(args.model)
    config = EmbeddingConfig(blocks=tuple(args.blocks), projection=False)
    test = LabelledSet.from_list(SPLITS / "test.txt", CALTECH)
    picked = np.sort(np.random.default_rng(0).choice(len(test.paths), 300, replace=False))  # near_duplicates' seed
    options = RuntimeOptions(device="cpu", batch_size=64)
    embedder = Embedder(config, options, model=model)
    photos = [Path(p) for p in args.photos.read_text().split("\n") if p]
    views, _ = encode_views(photos, TAEF2_DIR, config.image_size, 2, ROOT / "runs" / "cache")
    train = cached_view_features(model, config, views, CACHE)
    gallery = embedder.pooled_features(encode_set(model, test.paths, config.image_size, ROOT / "runs" / "eval-cache").x0)
    queries = embedder.pooled_features(encode_queries(model, [test.paths[i] for i in picked], 0))
    rows: dict[str, Projection | None] = {}
    bundled = Embedder(config.replace(projection=True), options, model=model).projection
    if bundled is not None:
        rows["as indexed today (bundled projection)"] = bundled
    rows["PCA-whitening (256)"] = fit_projection(train[:, 0], key="pca")
    rows["head alone (256)"] = fit_contrastive_projection(train, "head", HeadConfig(steps=args.steps))
    rows["head + kept whitening (128 + 128)"] = fit_contrastive_projection(
        train, "head", HeadConfig(dim=128, keep_whitening=128, steps=args.steps)
    )
    labels = np.array(test.labels)
    held = np.array([p.parent.name in set(caltech_held_out()) for p in test.paths])
    originals, edit_names = np.repeat(picked, len(EDITS)), np.array(list(EDITS) * len(picked))
    canonical = same_photo(test.paths)
    results = {}
    for name, projection in rows.items():
        g, q = (normalise(projection.apply(x)) for x in (gallery, queries))
        everything, unseen = retrieval_metrics(g, labels), retrieval_metrics(g[held], labels[held])
        d = np.sqrt(np.maximum(2 - 2 * q @ g.T, 0))
        hits = recall(d, originals, canonical)["R@1"]
        results[name] = {
            "P@10": everything["P@10"], "mAP": everything["mAP"], "held-out P@10": unseen["P@10"], "held-out mAP": unseen["mAP"],
            "near-dup R@1": float(hits.mean()), "per_edit": {e: float(hits[edit_names == e].mean()) for e in EDITS},
            "dedup": calibrate(d, originals, canonical),
        }  # fmt: skip
    print(f"\nProjection heads on model {args.model!r}, config {json.dumps(config.to_dict())}; "
          f"trained on {train.shape[0]:,} photos x {train.shape[1]} views ({args.photos.name})\n")  # fmt: skip
    print("| row | P@10 | mAP | held-out P@10 | held-out mAP | near-dup R@1 | " + " | ".join(EDITS) + " | dedup recall @ precision 0.95 (threshold) |")
    print("|---" * (7 + len(EDITS)) + "|")
    for name, r in results.items():
        edits = " | ".join(f"{r['per_edit'][e]:.3f}" for e in EDITS)
        print(f"| {name} | {r['P@10']:.3f} | {r['mAP']:.3f} | {r['held-out P@10']:.3f} | {r['held-out mAP']:.3f} | "
              f"{r['near-dup R@1']:.3f} | {edits} | {r['dedup']['recall']:.3f} ({r['dedup']['threshold']:.3f}) |")  # fmt: skip
    args.out.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
