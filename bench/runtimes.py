"""Do the runtimes give the same search quality? Caltech-101 test split, default config, as indexed.

    python bench/runtimes.py [--limit N]

Embeds every test photo with each runtime and dtype (torch bf16 / fp32, OpenVINO bf16 / fp32),
from the image files, exactly as `diffsearch index` does, and reports P@1, P@10 and mAP over the
split, plus how far each runtime's vectors are from torch fp32's (cosine). #10 asks that a new
runtime keep P@10 within 0.005 of torch on this split.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.training.evaluation import LabelledSet, retrieval_metrics  # noqa: E402

ROWS = (("torch", "float32"), ("torch", "bfloat16"), ("openvino", "float32"), ("openvino", "bfloat16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    args = parser.parse_args()
    labelled = LabelledSet.from_list(SPLITS / "test.txt", CALTECH)
    paths, labels = labelled.paths, labelled.labels
    if args.limit:
        paths, labels = paths[: args.limit], labels[: args.limit]
    model = load_model("default")
    vectors = {}
    for runtime, dtype in ROWS:
        embedder = Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu", batch_size=64, runtime=runtime, dtype=dtype), model=model)
        started = time.perf_counter()
        vectors[runtime, dtype] = np.concatenate([embedder.embed(paths[i : i + 64]) for i in range(0, len(paths), 64)])
        print(f"{runtime} {dtype}: {len(paths) / (time.perf_counter() - started):.1f} img/s", file=sys.stderr, flush=True)
    reference = vectors["torch", "float32"]
    print(f"Caltech-101 test split, {len(paths)} photos, default config as indexed\n")
    print("| runtime | dtype | P@1 | P@10 | mAP | P@10 - torch fp32 | min cosine to torch fp32 |")
    print("|---|---|---|---|---|---|---|")
    base = retrieval_metrics(reference, np.asarray(labels))
    for (runtime, dtype), v in vectors.items():
        m = retrieval_metrics(v, np.asarray(labels))
        cosine = float((v * reference).sum(axis=1).min())
        print(f"| {runtime} | {dtype} | {m['P@1']:.4f} | {m['P@10']:.4f} | {m['mAP']:.4f} | {m['P@10'] - base['P@10']:+.4f} | {cosine:.5f} |")


if __name__ == "__main__":
    main()
