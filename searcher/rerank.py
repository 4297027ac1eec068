"""Re-ranking a search's short list by where the query sits in each photo (spatial verification).

A pooled vector of a whole photo cannot hold every part of it, so a re-framed or cropped copy can
land further from its original than other photos do. Instance retrieval's classic answer is to
verify the top of a ranking spatially; here with the latents the index keeps of each photo's
frame. The query's centre square at three zooms (the centre of its own frame latent, and
`Embedder.template_pixels` encoded at 0.75 and 0.5625), each also left-right mirrored, slides
over each candidate's latent. The best normalised
cross-correlation (the cosine between a template and a window, both centred by the latents' mean)
is the candidate's match score in [-1, 1], and the short list is re-ordered by

    distance^2 - MATCH_WEIGHT x score

bench/spatial_rerank.py (Caltech val, 300 originals x 10 edits): near-duplicate recall@1 0.962 ->
0.985, re-framed copies 0.767 -> 0.940, crops 0.963 -> 0.997; the score is a re-ranking signal,
not a duplicate threshold (originals' 10th percentile 0.46, other photos' 99th 0.56).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from searcher.results import SearchResult

# How many of a search's nearest photos are re-ranked. A re-framed copy's original is often further
# down than a crop's (Caltech test: among the 20 nearest for 0.923 of re-framed copies, the 100
# nearest for 0.987). On validation (300 originals x 10 edits, 1,201 photos) depth 20 / 50 / 100
# found 0.979 / 0.982 / 0.984 of edited copies first (re-framed 0.903 / 0.917 / 0.930, no edit
# worse) at class P@10 0.553 / 0.553 / 0.551; 100 costs ~20 ms more a query than 20 (2 cores).
RERANK = 100
# A match score of 1 is worth this much squared distance (best of 1 and 2 on validation).
MATCH_WEIGHT = 2.0


def with_mirrors(templates: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each template (C, h, w) followed by its left-right mirror, so mirrored copies match too."""
    return [t for template in templates for t in (template, torch.flip(template, dims=[2]))]


def match_scores(
    templates: Sequence[torch.Tensor], candidates: Sequence[torch.Tensor], mean: torch.Tensor | None = None
) -> npt.NDArray[np.float64]:
    """For each candidate latent (C, H, W): the best cosine between any template (C, h, w) and a
    window of the candidate, both centred by `mean` (C,) (default: the mean latent cell of the
    candidates); -1 for a candidate smaller than every template."""
    best = np.full(len(candidates), -1.0)
    if not candidates or not templates:
        return best
    if mean is None:
        mean = torch.cat([c.float().flatten(1) for c in candidates], 1).mean(1)
    mean = mean.float()[:, None, None]
    by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for t in templates:
        centred = t.float() - mean
        by_size.setdefault(tuple(centred.shape[1:]), []).append(centred / centred.norm().clamp_min(1e-6))
    kernels = {size: torch.stack(units) for size, units in by_size.items()}
    by_orientation: dict[bool, list[int]] = {}  # portrait frames and the rest: one convolution each
    for r, candidate in enumerate(candidates):
        by_orientation.setdefault(candidate.shape[1] > candidate.shape[2], []).append(r)
    for rows in by_orientation.values():
        _best_windows(kernels, [candidates[r].float() - mean for r in rows], best, np.array(rows))
    return best


def _best_windows(
    kernels: Mapping[tuple[int, int], torch.Tensor], centred: Sequence[torch.Tensor], best: npt.NDArray[np.float64], rows: npt.NDArray[np.int64]
) -> None:
    """`best[rows]` raised to each centred candidate's best window cosine with any unit kernel.
    The candidates are zero-padded to one shape (frames differ by a few cells) and matched in one
    convolution per kernel size; windows reaching into a candidate's padding are left out, so each
    score is exactly its own frame's."""
    heights = torch.tensor([c.shape[1] for c in centred])
    widths = torch.tensor([c.shape[2] for c in centred])
    g = torch.zeros(len(centred), centred[0].shape[0], int(heights.max()), int(widths.max()))
    for j, c in enumerate(centred):
        g[j, :, : c.shape[1], : c.shape[2]] = c
    energy = (g * g).sum(1, keepdim=True)
    for (h, w), kernel in kernels.items():
        fits = ((heights >= h) & (widths >= w)).numpy()
        if not fits.any():
            continue
        window_norms = (F.avg_pool2d(energy, (h, w), stride=1) * (h * w)).sqrt().clamp_min(1e-6)
        cosines = (F.conv2d(g, kernel) / window_norms).amax(1)  # (n, H - h + 1, W - w + 1)
        inside = (torch.arange(cosines.shape[1])[None, :, None] <= (heights - h)[:, None, None]) & (
            torch.arange(cosines.shape[2])[None, None, :] <= (widths - w)[:, None, None]
        )
        scores = cosines.masked_fill(~inside, -torch.inf).amax(dim=(1, 2)).double().numpy()
        best[rows[fits]] = np.maximum(best[rows[fits]], scores[fits])


def order_key(squared_distance: float, match: float) -> float:
    """What a re-ranked short list is sorted by: squared distance less MATCH_WEIGHT x match score
    (searcher.expansion sorts by the same, with the expanded query's distance)."""
    return squared_distance - MATCH_WEIGHT * match


def can_rerank(ids: Sequence[int], latents: Mapping[int, npt.NDArray[np.float16]]) -> bool:
    """Whether a short list of these photo ids can be re-ranked: two or more, every one with a kept
    latent (an index from before latents were kept has none; a partial re-ranking would favour the
    photos that happen to have one)."""
    return len(ids) >= 2 and all(i in latents for i in ids)


def rerank(
    results: list[SearchResult], templates: Sequence[torch.Tensor], latents: Mapping[int, npt.NDArray[np.float16]], n: int = RERANK
) -> list[SearchResult]:
    """`results` (nearest first) with the first `n` re-ordered by distance^2 - MATCH_WEIGHT x match
    score, each carrying its score; the rest follow as they were. Unchanged unless `can_rerank`."""
    head = results[:n]
    if not can_rerank([r.id for r in head], latents):
        return results
    scores = match_scores(templates, [torch.from_numpy(latents[r.id].astype(np.float32)) for r in head])
    keys = [order_key(r.distance**2, s) for r, s in zip(head, scores, strict=True)]
    order = np.argsort(keys, kind="stable")
    return [head[i].model_copy(update={"match": float(scores[i])}) for i in order] + results[n:]
