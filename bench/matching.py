"""Re-ranking's matching cost: FFT correlations (searcher.rerank) against direct convolutions.

    python bench/matching.py [--repeats 20]

A query's re-ranking matches its templates (three zooms, each mirrored) against the kept latents
of its short list. searcher.rerank.match_scores correlates them through 2-D FFTs; the baseline,
run in the same process on the same inputs, is the direct-convolution matching it replaced
(`direct_scores`, as shipped before: one padded convolution per template size and frame
orientation, windows wholly inside a frame). Inputs are real: the bundled samples (data/samples)
embedded by the default model, their frame latents as the candidates (cycled to the list's
length) and one sample's templates, as Searcher builds them. Both must give the same scores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.scale import cpu_name  # noqa: E402
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions  # noqa: E402
from indexer.embedding.embedder import Embedder  # noqa: E402
from searcher.rerank import match_scores, with_mirrors  # noqa: E402


def direct_scores(templates: list[torch.Tensor], candidates: list[torch.Tensor]) -> np.ndarray:
    """The matching shipped before: centred by the candidates' mean cell, candidates zero-padded to
    one shape per orientation, one convolution per template size, padded windows masked out."""
    best = np.full(len(candidates), -1.0)
    mean = torch.cat([c.flatten(1) for c in candidates], 1).mean(1)[:, None, None]
    by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for t in templates:
        centred = t - mean
        by_size.setdefault(tuple(centred.shape[1:]), []).append(centred / centred.norm().clamp_min(1e-6))
    kernels = {size: torch.stack(units) for size, units in by_size.items()}
    by_orientation: dict[bool, list[int]] = {}
    for r, c in enumerate(candidates):
        by_orientation.setdefault(c.shape[1] > c.shape[2], []).append(r)
    for rows in by_orientation.values():
        centred = [candidates[r] - mean for r in rows]
        heights, widths = torch.tensor([c.shape[1] for c in centred]), torch.tensor([c.shape[2] for c in centred])
        g = torch.zeros(len(centred), centred[0].shape[0], int(heights.max()), int(widths.max()))
        for j, c in enumerate(centred):
            g[j, :, : c.shape[1], : c.shape[2]] = c
        energy = (g * g).sum(1, keepdim=True)
        for (h, w), kernel in kernels.items():
            fits = ((heights >= h) & (widths >= w)).numpy()
            if not fits.any():
                continue
            norms = (F.avg_pool2d(energy, (h, w), stride=1) * (h * w)).sqrt().clamp_min(1e-6)
            cosines = (F.conv2d(g, kernel) / norms).amax(1)
            inside = (torch.arange(cosines.shape[1])[None, :, None] <= (heights - h)[:, None, None]) & (
                torch.arange(cosines.shape[2])[None, None, :] <= (widths - w)[:, None, None]
            )
            scores = cosines.masked_fill(~inside, -torch.inf).amax(dim=(1, 2)).double().numpy()
            idx = np.array(rows)[fits]
            best[idx] = np.maximum(best[idx], scores[fits])
    return best


def per_call_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    embedder = Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu"))
    photos = sorted((ROOT / "data" / "samples").rglob("*.jpg"))
    latents = [torch.from_numpy(x.astype(np.float32)) for x in embedder.embed_frames([embedder.prepare(p) for p in photos]).latents]
    query = photos[0]
    templates = with_mirrors([embedder.query_template(latents[0].numpy().astype(np.float16)), *embedder.encode_each(embedder.template_pixels(query))])
    shapes = sorted({tuple(x.shape[1:]) for x in latents})
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{len(photos)} sample frames (latent shapes {shapes}), {len(templates)} templates; ms per query, {args.repeats} repeats\n")
    print("| short list | direct convolutions (before) | FFT (searcher.rerank) | ratio | max score difference |")
    print("|---|---|---|---|---|")
    for n in (20, 100):
        candidates = [latents[i % len(latents)] for i in range(n)]
        before, after = direct_scores(templates, candidates), match_scores(templates, candidates)
        t_before = per_call_ms(lambda: direct_scores(templates, candidates), args.repeats)
        t_after = per_call_ms(lambda: match_scores(templates, candidates), args.repeats)
        print(f"| {n} | {t_before:.1f} | {t_after:.1f} | {t_before / t_after:.2f}x | {np.abs(before - after).max():.1e} |")


if __name__ == "__main__":
    main()
