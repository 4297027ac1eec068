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

The correlations run through 2-D FFTs: 15 ms for 100 candidates on 2 cores, where direct
convolutions took 20 (bench/results/matching.md). `match_scores` can let a window overhang a frame's long
edges (`min_overlap`, measured above MIN_OVERLAP); search does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch

from searcher.results import SearchResult

# How many of a search's nearest photos are re-ranked. A re-framed copy's original is often further
# down than a crop's (Caltech test: among the 20 nearest for 0.923 of re-framed copies, the 100
# nearest for 0.987). On validation (300 originals x 10 edits, 1,201 photos) depth 20 / 50 / 100
# found 0.979 / 0.982 / 0.984 of edited copies first (re-framed 0.903 / 0.917 / 0.930, no edit
# worse) at class P@10 0.553 / 0.553 / 0.551; 100 costs ~20 ms more a query than 20 (2 cores).
RERANK = 100
# A match score of 1 is worth this much squared distance (best of 1 and 2 on validation).
MATCH_WEIGHT = 2.0
# How much of a template must lie inside a photo's kept frame; below 1 a window may overhang the
# frame's long edges, where `frame_crop` cut it short of a wider photo. Measured on Caltech val as
# searched (300 originals x 10 edits, runs of 2026-11-29): 0.7 finds more re-framed copies and crops
# first (0.930 -> 0.943 and 0.970 -> 0.983; overhanging both axes 0.943 and 0.987) but costs class
# retrieval (P@10 0.551 -> 0.542, the 21 held-out classes' 0.626 -> 0.599), and scoring an
# overhanging window by its share inside kept less of both (0.937, 0.977; P@10 0.548, held-out
# 0.618). Similar photos are what most searches want, so templates stay wholly inside.
MIN_OVERLAP = 1.0


def with_mirrors(templates: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each template (C, h, w) followed by its left-right mirror, so mirrored copies match too."""
    return [t for template in templates for t in (template, torch.flip(template, dims=[2]))]


def match_scores(
    templates: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor],
    mean: torch.Tensor | None = None,
    min_overlap: float = MIN_OVERLAP,
) -> npt.NDArray[np.float64]:
    """For each candidate latent (C, H, W): the best cosine between any template (C, h, w) and a
    window of the candidate, both centred by `mean` (C,) (default: the mean latent cell of the
    candidates); -1 for a candidate no template fits.

    A window may overhang the candidate's frame along its longer side (where the kept frame stops
    short of a wider photo, and a re-framed copy may sit) as long as at least `min_overlap` of the
    template's cells lie inside it; the cosine is then taken over those cells alone. 1 asks for
    windows wholly inside."""
    best = np.full(len(candidates), -1.0)
    if not candidates or not templates:
        return best
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
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
        _best_windows(kernels, [candidates[r].float() - mean for r in rows], best, np.array(rows), min_overlap)
    return best


def _best_windows(
    kernels: Mapping[tuple[int, int], torch.Tensor],
    centred: Sequence[torch.Tensor],
    best: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64],
    min_overlap: float,
) -> None:
    """`best[rows]` raised to each centred candidate's best window cosine with any unit kernel.

    `centred` are all portrait or all not. They are zero-padded to one shape (frames differ by a
    few cells, and a window may overhang a frame's long edges, across which `frame_crop` cut it
    short of the photo, by up to 1 - min_overlap of a kernel's side) and correlated with every kernel
    at every offset through 2-D FFTs (only offsets whose window lies within the padded shape are
    read, so none wraps around). A window's cosine counts only the cells inside its own
    candidate's frame: the window's through the padding's zeros, the kernel's through a
    correlation with the frame's mask. Windows with less than `min_overlap` of the kernel inside
    are left out, so each score is exactly its own frame's."""
    slack = 1 - min_overlap + 1e-6
    portrait = centred[0].shape[1] > centred[0].shape[2]  # the frame's long axis: where it was cut
    pad_h = max(int(slack * h) for h, _ in kernels) if portrait else 0
    pad_w = 0 if portrait else max(int(slack * w) for _, w in kernels)
    shape = (max(c.shape[1] for c in centred) + 2 * pad_h, max(c.shape[2] for c in centred) + 2 * pad_w)
    g = torch.zeros(len(centred), centred[0].shape[0], *shape)
    inside = torch.zeros(len(centred), 1, *shape)
    for j, c in enumerate(centred):
        g[j, :, pad_h : pad_h + c.shape[1], pad_w : pad_w + c.shape[2]] = c
        inside[j, :, pad_h : pad_h + c.shape[1], pad_w : pad_w + c.shape[2]] = 1
    spectrum, inside_spectrum = torch.fft.rfft2(g), torch.fft.rfft2(inside)
    energy_spectrum = torch.fft.rfft2((g * g).sum(1, keepdim=True))

    def correlate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(n, C) spectra correlated with each of k (m, C, h, w), summed over C: (n, m, offsets),
        each offset's window wholly within the padded shape."""
        product = (x[:, None] * torch.fft.rfft2(k, s=shape).conj()[None]).sum(2)  # (complex einsum is far slower)
        return torch.fft.irfft2(product, s=shape)[..., : shape[0] - k.shape[2] + 1, : shape[1] - k.shape[3] + 1]

    for (h, w), kernel in kernels.items():
        if shape[0] < h or shape[1] < w:
            continue
        box = torch.ones(1, 1, h, w)
        cells = math.ceil(min_overlap * h * w - 1e-6)  # of the kernel's, inside the frame; counted in whole numbers
        enough = correlate(inside_spectrum, box) > cells - 0.5
        window_energy = correlate(energy_spectrum, box).clamp_min(0)
        kernel_energy = (  # of the cells inside: 1 for a unit kernel wholly inside, all that 1 lets through
            1.0 if min_overlap == 1 else correlate(inside_spectrum, (kernel * kernel).sum(1, keepdim=True)).clamp_min(0)
        )
        cosines = correlate(spectrum, kernel) / (window_energy * kernel_energy).sqrt().clamp_min(1e-6)
        scores = cosines.masked_fill(~enough, -torch.inf).amax(dim=(1, 2, 3)).double().numpy()
        fits = np.isfinite(scores)
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
