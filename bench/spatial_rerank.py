"""Re-ranking a near-duplicate search by where the query sits in a candidate (validation only).

    python bench/spatial_rerank.py [--candidates 20]

An exploration for #9's weakest edits, crops and landscape/portrait re-framing: the pooled vector
of a zoomed-in copy moves too far for the original to come first. Classic instance retrieval
verifies the top of a ranking spatially; here with the TAEF2 latents the index already computes.
The query's latent (at 128, 96 and 72 px, and each left-right mirrored) slides over each of the
top --candidates gallery photos' latents; the best normalised cross-correlation (the cosine
between the template and a window, latents centred by their mean) is the photo's match score,
and candidates are re-ordered by distance - weight x score.

Two galleries: the centre-square latent every index already computes (no extra encoding), and
the latent of the whole frame (shorter side 128, longer side <= 256: 1.5x the encoder's work
for a 3:2 photo). Data: Caltech-101's validation split (bench/splits/val.txt), 300 originals x
10 edits (seed 1), the shipped default's stored vectors for the first ranking. The test split is
left for a shipped method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.near_duplicates import encode_queries, same_photo  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder  # noqa: E402
from indexer.embedding.model import load_model  # noqa: E402
from indexer.images import load_image, to_tensor, trim_border  # noqa: E402
from indexer.training.evaluation import LabelledSet, encode_set  # noqa: E402
from indexer.training.views import EDITS  # noqa: E402

CACHE = ROOT / "runs" / "eval-cache"
SIZES = (128, 96, 72)  # query template sizes: zooms of 1, 0.75 and 0.5625 (a 9:16 re-crop's)


def whole_frame(image: Image.Image, short: int = 128, max_long: int = 256) -> Image.Image:
    """The trimmed photo with its shorter side at `short`, both sides multiples of 8 (no crop)."""
    image = trim_border(image)
    w, h = image.size
    s = short / min(w, h)
    size = [min(max_long, max(short, round(v * s / 8) * 8)) for v in (w, h)]
    return image.resize(tuple(size), Image.Resampling.BICUBIC, reducing_gap=3.0)


def match_scores(templates: list[torch.Tensor], candidates: list[torch.Tensor], mean: torch.Tensor) -> np.ndarray:
    """For each candidate latent (C, H, W): the best cosine between any template (C, h, w) and a
    window of it, both centred by `mean` (C, 1, 1); -1 where no template fits."""
    best = np.full(len(candidates), -1.0)
    centred = [t.float() - mean for t in templates]
    units = [t / t.norm() for t in centred]
    for r, g in enumerate(candidates):
        g = g.float() - mean
        energy = (g * g).sum(0)[None, None]
        window_norms: dict[tuple[int, int], torch.Tensor] = {}  # by template size: a mirrored template shares its original's
        for t in units:
            h, w = t.shape[1:]
            if g.shape[1] < h or g.shape[2] < w:
                continue
            if (h, w) not in window_norms:
                window_norms[h, w] = F.conv2d(energy, torch.ones(1, 1, h, w))[0, 0].sqrt().clamp_min(1e-6)
            num = F.conv2d(g[None], t[None])[0, 0]
            best[r] = max(best[r], float((num / window_norms[h, w]).max()))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model("default")
    encoder = Embedder(EmbeddingConfig(blocks=("latent",), projection=False), RuntimeOptions(device="cpu", runtime="torch"), model=model)
    val = LabelledSet.from_list(SPLITS / "val.txt", CALTECH)
    picked = np.sort(np.random.default_rng(1).choice(len(val.paths), args.originals, replace=False))
    photos = [val.paths[i] for i in picked]
    queries = {size: encode_queries(model, photos, 1, size=size) for size in SIZES}
    centre = encode_set(model, val.paths, 128, CACHE).x0
    whole = [encoder.encode(to_tensor([whole_frame(load_image(p)[0])]))[0] for p in tqdm(val.paths, desc="whole frames")]
    default = Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu", batch_size=64), model=model)
    gallery = default.finish(default.pooled_features(centre))
    d = 2 - 2 * default.finish(default.pooled_features(queries[128])) @ gallery.T  # squared distances
    originals, names = np.repeat(picked, len(EDITS)), np.array(list(EDITS) * len(picked))
    canonical = same_photo(val.paths)
    top = np.argsort(d, 1)[:, : args.candidates]
    first = np.take_along_axis(d, top, 1)
    mean = torch.cat([g.flatten(1) for g in whole], 1).mean(1)[:, None, None]
    same = canonical[top] == canonical[originals][:, None]
    print(f"original among the top {args.candidates}: {same.any(1).mean():.3f}\n")
    print("| gallery latent | templates | weight | recall@1 | " + " | ".join(EDITS) + " |")
    print("|---|---|---|---|" + "---|" * len(EDITS))
    hit = canonical[top[:, 0]] == canonical[originals]
    print("| (no re-ranking) | | | " + f"{hit.mean():.3f} | " + " | ".join(f"{hit[names == e].mean():.3f}" for e in EDITS) + " |")
    spread = []
    for gname, latents in {"centre square": list(centre), "whole frame": whole}.items():
        for mirrored in (False, True):
            scores = np.stack([
                match_scores([q[i] for q in queries.values()] + ([torch.flip(q[i], dims=[2]) for q in queries.values()] if mirrored else []),
                             [latents[j] for j in top[i]], mean)
                for i in tqdm(range(len(top)), desc=f"matching on the {gname}")
            ])  # fmt: skip
            spread.append(f"{gname}{', + mirrored' if mirrored else ''}: score of the original median {np.median(scores[same]):.3f} "
                          f"(10th percentile {np.quantile(scores[same], 0.1):.3f}); of other photos median {np.median(scores[~same]):.3f}, "
                          f"99th percentile {np.quantile(scores[~same], 0.99):.3f}")  # fmt: skip
            for weight in (1.0, 2.0):
                pick = top[np.arange(len(top)), np.argmin(first - weight * scores, 1)]
                hit = canonical[pick] == canonical[originals]
                print(f"| {gname} | {'query + mirror' if mirrored else 'query'} x {len(SIZES)} sizes | {weight:g} | {hit.mean():.3f} | "
                      + " | ".join(f"{hit[names == e].mean():.3f}" for e in EDITS) + " |", flush=True)  # fmt: skip
    print("\n" + "\n".join(f"- {line}" for line in spread))


if __name__ == "__main__":
    main()
