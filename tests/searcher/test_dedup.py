import logging
from dataclasses import replace

import numpy as np
import pytest

from indexer.errors import ConfigError
from sqlalchemy import delete
from sqlalchemy.orm import Session

from indexer.storage.rows import PhotoLatent
from searcher.dedup import can_verify, find_duplicates, groups_of, keep_order, nearest_neighbours
from searcher.dedup_rule import VECTORS_ONLY, DedupRule, default_rule, duplicate_groups
from searcher.kept_latents import KeptLatents
from searcher.verification import pair_matches
from searcher.searcher import Searcher
from tests.conftest import samples_with_duplicates


def background(n=17, start=0.8):
    return list(np.linspace(start, start + 0.1, n))


def test_the_threshold_alone_decides_when_the_gap_test_is_off():
    rule = DedupRule(threshold=0.25, gap=0)
    assert rule.duplicates([0.1, 0.2, 0.3, *background()]) == 2
    assert rule.duplicates([0.3, *background()]) == 0


def test_a_copy_far_closer_than_the_rest_is_a_duplicate_beyond_the_threshold():
    rule = DedupRule(threshold=0.2, gap=0.65, cap=0.5, neighbours=16)
    assert rule.duplicates([0.4, *background()[:16]]) == 1  # 0.4 <= 0.65 * 0.8
    assert rule.duplicates([0.4, 0.45, 0.48, *background()[:14]]) == 3  # a group: the jump after the last copy counts
    assert rule.duplicates(np.linspace(0.4, 0.6, 17)) == 0  # a crowd without a jump: no duplicates
    assert rule.duplicates([0.55, *background()[:16]]) == 0  # beyond the cap, however lonely
    assert rule.duplicates([0.4, 0.8]) == 0  # too few photos to know what "far" is: the threshold alone


def test_bad_rules_are_refused():
    for bad in ({"threshold": 0}, {"gap": 1.0}, {"gap": -0.1}, {"cap": 0}, {"neighbours": 0}):
        with pytest.raises(ConfigError):
            DedupRule(**bad)


def test_groups_are_connected_components_of_the_links():
    # rows 0-1 are close, 1-2 are close, 3 is alone; each row lists the others nearest first
    d = np.array([[0.1, 0.9, 0.95], [0.1, 0.15, 0.9], [0.15, 0.9, 0.95], [0.9, 0.95, 0.95]])
    ids = np.array([[1, 2, 3], [0, 2, 3], [1, 0, 3], [0, 1, 2]])
    assert sorted(map(sorted, duplicate_groups(ids, d, DedupRule(threshold=0.2, gap=0)))) == [[0, 1, 2]]
    within = np.array([True, False, True, True])  # row 1 elsewhere: 0 and 2 were joined only through it
    assert duplicate_groups(ids, d, DedupRule(threshold=0.2, gap=0), within=within) == []
    assert duplicate_groups(ids, d, DedupRule(threshold=0.2, gap=0), within=np.array([True, True, False, True])) == [[0, 1]]
    short = np.array([[1, -1], [0, -1], [-1, -1]])  # -1 pads short rows: never a link, whatever its distance
    assert duplicate_groups(short, np.array([[0.1, 0.0], [0.1, 0.0], [0.0, 0.0]]), DedupRule(gap=0)) == [[0, 1]]


def test_a_verifying_rule_links_by_verified_distance_and_adds_the_vectors_only_links():
    neighbours = np.array([[1, 2, 3], [0, 2, 3], [3, 0, 1], [2, 0, 1]])
    distances = np.array([[0.1, 0.9, 0.95], [0.1, 0.9, 0.95], [0.3, 0.9, 0.95], [0.3, 0.9, 0.95]])
    matches = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # 0-1 match, 2-3 do not
    verifying = DedupRule(threshold=0.2, gap=0, match_weight=2.0)
    also = DedupRule(threshold=0.35, gap=0, match_weight=0)
    assert groups_of(neighbours, distances, matches, verifying) == [[0, 1]]  # 2-3: sqrt(0.09 + 2) is far
    assert sorted(groups_of(neighbours, distances, matches, verifying, also)) == [[0, 1], [2, 3]]  # 0.3 <= 0.35 by vectors
    assert groups_of(neighbours, distances, None, DedupRule(threshold=0.35, gap=0)) == [[0, 1], [2, 3]]  # nothing to verify
    assert duplicate_groups(neighbours, distances, DedupRule(threshold=0.2, gap=0), (neighbours, distances + 1, also)) == [[0, 1]]


def test_the_copy_to_keep_has_the_most_pixels_then_is_raw_then_the_oldest_file_then_the_largest():
    from indexer.storage.rows import Photo

    def photo(id, width, height, mtime, size, format="JPEG"):
        return Photo(id=id, path=f"/p/{id}.jpg", content_hash="", size=size, mtime=mtime, width=width, height=height, format=format)

    original = photo(5, 4000, 3000, mtime=100.0, size=3_000_000)
    copies = [
        photo(1, 2000, 1500, mtime=50.0, size=9_000_000),  # resized, however old and heavy
        photo(2, 4000, 3000, mtime=200.0, size=12_000_000),  # the same pixels saved later as PNG
        photo(3, 4000, 3000, mtime=100.0, size=1_000_000),  # kept the original's time, re-encoded smaller
        photo(4, 4000, 3000, mtime=100.0, size=3_000_000),  # a byte-identical copy indexed first
    ]
    assert [p.id for p in sorted([*copies, original], key=keep_order)] == [4, 5, 3, 2, 1]
    # A RAW and the JPEG its camera wrote beside it (same pixels, the JPEG a moment older): the RAW.
    twins = [photo(6, 4000, 3000, mtime=99.5, size=5_000_000), photo(7, 4000, 3000, mtime=100.0, size=25_000_000, format="RAW")]
    assert [p.id for p in sorted(twins, key=keep_order)] == [7, 6]
    assert [p.id for p in sorted([*twins, photo(8, 4000, 3001, mtime=200.0, size=1)], key=keep_order)] == [8, 7, 6]


def test_heavily_edited_copies_are_found_where_the_old_threshold_missed_them(tmp_path, embedder, sample_photos, caplog):
    from indexer.indexing import index_photos
    from indexer.settings import Settings

    photos = samples_with_duplicates(tmp_path / "photos", sample_photos)  # its own copy: photos are moved away below
    settings = Settings.load(env={}, index_dir=tmp_path / "index", workers=0)
    index_photos([photos], settings, embedder=embedder)
    searcher = Searcher(settings.index_dir, model=embedder.model)

    def names(groups):
        return sorted(sorted(p.path.rsplit("/", 1)[-1] for p in g.photos) for g in groups)

    leopards, airplanes = ["Leopards_image_0007.jpg", "leopard_gray.png"], ["airplane_tilted.png", "airplanes_image_0021.jpg"]
    assert can_verify(searcher)
    groups = find_duplicates(searcher)
    assert names(groups) == [leopards, airplanes]  # the default: verified, plus ALSO_BY_VECTORS' links
    # Each group starts with the copy to keep, the original (same pixels, older file), at distance 0.
    assert {g.photos[0].path.rsplit("/", 1)[-1] for g in groups} == {leopards[0], airplanes[1]}
    assert all(g.photos[0].distance == 0 < g.photos[1].distance for g in groups)
    # Verified alone, both copies are found: the templates from the kept latents find the tilted
    # copy (the templates encoded from the files had missed it, verified distance 1.043, just past
    # the cap 1.04, and only the strict vectors-only links brought it back).
    ids = np.asarray(searcher.fresh_vectors().ids(), dtype=np.int64)
    _, neighbours, distances = nearest_neighbours(searcher, ids, DedupRule().neighbours + 2)
    latents = KeptLatents(searcher, ids)
    matches = pair_matches(neighbours, latents.templates, latents.get, latents.mean())
    verified_alone = groups_of(neighbours, distances, matches, DedupRule())
    assert sorted(sorted(searcher.photo(int(ids[r])).path.rsplit("/", 1)[-1] for r in rows) for rows in verified_alone) == [leopards, airplanes]
    assert names(find_duplicates(searcher, VECTORS_ONLY)) == [leopards, airplanes]  # the vectors alone, as before verification
    assert names(find_duplicates(searcher, DedupRule(threshold=0.25, gap=0, match_weight=0))) == []  # the rule before the gap test
    # On the whole vector (whitening and class parts too) the same rule calls different photos of
    # one class duplicates: the 8 Faces_easy samples are nearer each other than the copies are.
    whole = replace(searcher.embedder.projection, instance_dims=None)
    searcher.embedder.projection, kept = whole, searcher.embedder.projection
    assert any(len(group) >= 8 for group in names(find_duplicates(searcher, VECTORS_ONLY)))
    searcher.embedder.projection = kept

    # Only some photos (a folder, or any path prefix, as search filters): duplicates among them.
    assert names(find_duplicates(searcher, path_prefix=str(photos / "airplane"))) == [airplanes]
    assert find_duplicates(searcher, path_prefix=str(photos / "Leopards")) == []  # the gray copy is not under it
    assert names(find_duplicates(searcher, path_prefix=str(photos) + "/")) == [leopards, airplanes]
    # Verification reads no file: with every photo moved away since indexing, the same groups.
    for photo in photos.iterdir():
        photo.rename(tmp_path / photo.name)
    assert names(find_duplicates(searcher)) == [leopards, airplanes]

    # An index without kept latents (made before they were kept) cannot be verified: the
    # vectors-only rule, and a warning where a weight is asked for.
    with Session(searcher.index.engine) as session, session.begin():
        session.execute(delete(PhotoLatent))
    assert not can_verify(searcher) and default_rule(False) == VECTORS_ONLY
    assert names(find_duplicates(searcher)) == names(find_duplicates(searcher, VECTORS_ONLY))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="searcher.dedup"):
        find_duplicates(searcher, DedupRule())
    assert "comparing vectors alone" in caplog.text


def test_the_default_rule_follows_what_the_index_allows_and_what_is_given():
    assert default_rule(True) == DedupRule() and DedupRule().match_weight > 0
    assert default_rule(False) == VECTORS_ONLY and VECTORS_ONLY.match_weight == 0
    assert default_rule(True, match_weight=0) == VECTORS_ONLY  # asking for no verification: the plain-distance rule
    assert default_rule(True, threshold=0.1, gap=None) == replace(DedupRule(), threshold=0.1)
    with pytest.raises(ConfigError):
        DedupRule(match_weight=-1)
