import numpy as np
import pytest
import torch

from searcher.rerank import match_scores, with_mirrors
from searcher.verification import MIN_OVERLAP, pair_matches, sorted_rows, verified_distances


def centre(latent, size=6):
    top, left = (latent.shape[1] - size) // 2, (latent.shape[2] - size) // 2
    return latent[:, top : top + size, left : left + size]


def photos():
    """Row 0 a photo's latent, row 1 its top-left corner cut out (a crop off the centre: its centre is
    inside row 0, row 0's centre is not all inside it), row 2 an unrelated photo."""
    g = torch.Generator().manual_seed(0)
    whole = torch.randn(4, 16, 16, generator=g)
    return [whole, whole[:, :9, :9].clone(), torch.randn(4, 16, 16, generator=g)]


def test_a_pair_scores_the_better_of_its_two_directions_whichever_row_lists_it():
    latents = photos()
    mean = torch.cat([x.flatten(1) for x in latents], 1).mean(1)
    neighbours = np.array([[1, 2], [2, -1], [0, 1]])  # row 1 does not list row 0; row 0 lists row 1
    matches = pair_matches(neighbours, lambda r: [centre(latents[r])], lambda rows: {r: latents[r] for r in rows}, mean)
    crop_in_whole = match_scores(with_mirrors([centre(latents[1])]), [latents[0]], mean, MIN_OVERLAP)[0]
    whole_in_crop = match_scores(with_mirrors([centre(latents[0])]), [latents[1]], mean, MIN_OVERLAP)[0]
    assert crop_in_whole > 0.999 and whole_in_crop < 0.9  # only one direction finds the crop
    assert matches[0, 0] == crop_in_whole  # from row 0's list: the crop's templates, found by the reverse lookup
    assert matches[2, 1] == pytest.approx(max(match_scores(with_mirrors([centre(latents[2])]), [latents[1]], mean, MIN_OVERLAP)[0],
                                match_scores(with_mirrors([centre(latents[1])]), [latents[2]], mean, MIN_OVERLAP)[0]), abs=1e-6)  # fmt: skip (FFT float noise)
    assert matches[0, 1] < 0.5 and matches[1, 1] == -1  # the unrelated photo; a padded slot


def test_scores_do_not_depend_on_what_else_is_listed():
    latents = photos()
    mean = torch.zeros(4)
    lists = [np.array([[1], [0], [0]]), np.array([[1, 2], [0, 2], [0, 1]])]
    got = [pair_matches(n, lambda r: [centre(latents[r])], lambda rows: {r: latents[r] for r in rows}, mean)[0, 0] for n in lists]
    assert got[0] == got[1]


def test_verified_distances_add_what_the_match_lacks():
    d = np.array([[0.0, 0.3, np.inf]])
    m = np.array([[1.0, 0.5, -1.0]])
    v = verified_distances(d, m, 2.0)
    assert v[0, 0] == 0.0 and np.isclose(v[0, 1], np.sqrt(0.09 + 1.0)) and v[0, 2] == np.inf
    assert (verified_distances(d, m, 0.0) == d).all() and (v >= d).all()
    neighbours, resorted = sorted_rows(np.array([[7, 8, 9]]), np.array([[0.5, 0.2, 0.9]]))
    assert neighbours.tolist() == [[8, 7, 9]] and resorted.tolist() == [[0.2, 0.5, 0.9]]
