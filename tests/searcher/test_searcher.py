import io

import numpy as np
import pytest
from PIL import Image

from indexer.errors import ConfigError, IndexMismatchError, IndexNotFoundError, InvalidImageError
from searcher.dedup import find_duplicates
from searcher.dedup_rule import DedupRule
from searcher.searcher import MIRROR_MAX_DISTANCE, Searcher
from tests.conftest import SAMPLES


def class_of(path):
    return path.rsplit("/", 1)[-1].rsplit("_image", 1)[0]


def test_a_photo_finds_itself_first_at_distance_zero(searcher, sample_photos):
    results = searcher.query(sample_photos[5], k=5)
    assert results[0].path == str(sample_photos[5]) and results[0].distance < 1e-3
    assert results[0].score == pytest.approx(1.0, abs=1e-5) and results[0].match == pytest.approx(1.0, abs=1e-2)
    results = searcher.query(sample_photos[5], k=5, rerank=0)  # without re-ranking: nearest first
    assert results[0].path == str(sample_photos[5]) and results[0].match is None
    assert [r.distance for r in results] == sorted(r.distance for r in results)
    assert results[0].width > 0 and results[0].height > 0


def test_results_are_the_exact_euclidean_neighbours(searcher, sample_photos):
    query, mirrored = searcher.embed([sample_photos[0]], mirrored=True)
    assert np.allclose(query, searcher.embed([sample_photos[0]])[0], atol=1e-6)
    store = searcher.fresh_vectors()
    ids = store.ids()
    all_vectors = np.vstack([store.reconstruct(int(i)) for i in ids])
    plain = np.linalg.norm(all_vectors - query, axis=1)
    brute = ids[np.argsort(plain)[:10]]
    # (rerank=0: the spatial re-ranking of the nearest 20, tests/searcher/test_rerank.py, re-orders them)
    assert [r.id for r in searcher.query(sample_photos[0], k=10, mirror=False, rerank=0)] == brute.tolist()
    # By default the query's mirror searches too: a photo it finds within MIRROR_MAX_DISTANCE comes
    # at the nearer of the two distances.
    by_mirror = np.linalg.norm(all_vectors - mirrored, axis=1)
    nearer = np.where(by_mirror <= MIRROR_MAX_DISTANCE, np.minimum(plain, by_mirror), plain)
    assert (by_mirror <= MIRROR_MAX_DISTANCE).sum() >= 1 and (nearer != plain).any()  # the mirror did find something
    found = searcher.query(sample_photos[0], k=10, rerank=0)
    assert [r.id for r in found] == ids[np.argsort(nearer)[:10]].tolist()
    assert [r.distance for r in found] == pytest.approx(np.sort(nearer)[:10].tolist(), abs=1e-4)


def test_a_mirrored_copy_finds_its_original_first(searcher, sample_photos):
    for path in sample_photos[3::16]:
        mirrored = Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        found = searcher.query(mirrored, k=3)
        assert found[0].path == str(path) and found[0].distance < 0.1, (path, found[0])
        # Without the mirror the original is much further away: the features are not flip-invariant.
        plain = {r.path: r.distance for r in searcher.query(mirrored, k=64, mirror=False)}
        assert plain[str(path)] > 2 * found[0].distance + 0.1


def test_every_input_kind_gives_the_same_results(searcher, sample_photos):
    path = sample_photos[9]
    data = path.read_bytes()
    expected = [r.id for r in searcher.query(path, k=5)]
    for source in (str(path), data, io.BytesIO(data), Image.open(path), np.asarray(Image.open(path).convert("RGB"))):
        assert [r.id for r in searcher.query(source, k=5)] == expected


def test_query_id_batch_filters(searcher, sample_photos):
    first = searcher.query(sample_photos[0], k=1)[0]
    similar = searcher.query_id(first.id, k=4)
    assert similar[0].id == first.id
    batch = searcher.query_batch(sample_photos[:3], k=2)
    assert [b[0].path for b in batch] == [str(p) for p in sample_photos[:3]]
    assert all(r.distance <= 0.5 for r in searcher.query(sample_photos[0], k=50, max_distance=0.5))
    prefix = str(SAMPLES / "watch_")
    filtered = searcher.query(sample_photos[0], k=5, path_prefix=prefix)
    assert len(filtered) == 5 and all(r.path.startswith(prefix) for r in filtered)
    with pytest.raises(KeyError):
        searcher.query_id(10**9)


def test_same_class_neighbours_beat_chance(searcher, sample_photos):
    """8 classes of 8: chance precision@5 (excluding the query) is 1/9. The bundled model must do far better."""
    hits = []
    for path in sample_photos[::4]:
        results = searcher.query(path, k=6)[1:]
        hits.append(np.mean([class_of(r.path) == class_of(str(path)) for r in results]))
    assert np.mean(hits) > 0.4


def test_bad_queries_raise_library_errors(searcher):
    with pytest.raises(InvalidImageError):
        searcher.query(b"not an image")
    with pytest.raises(ConfigError, match="k must be"):
        searcher.query_vectors(np.zeros((1, searcher.embedder.dim), np.float32), k=0)


def test_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError, match="diffsearch index"):
        Searcher(tmp_path)


def test_changed_model_weights_are_refused(sample_index, default_model):
    from dataclasses import replace

    with pytest.raises(IndexMismatchError, match="model changed on disk"):
        Searcher(sample_index, model=replace(default_model, fingerprint="0000"))


def test_dedup_groups_exact_and_near_copies(tmp_path, embedder):
    from indexer.indexing import index_photos
    from indexer.settings import Settings

    photos = tmp_path / "photos"
    photos.mkdir()
    originals = sorted(SAMPLES.glob("*.jpg"))[:6]
    for p in originals:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "copy_exact.jpg").write_bytes(originals[0].read_bytes())
    Image.open(originals[1]).save(photos / "copy_recompressed.jpg", quality=85)
    settings = Settings.load(env={}, index_dir=tmp_path / "index", workers=0)
    index_photos([photos], settings, embedder=embedder)
    groups = find_duplicates(Searcher(settings.index_dir, model=embedder.model), DedupRule(threshold=0.3, gap=0))
    names = [sorted(p.path.rsplit("/", 1)[-1] for p in g.photos) for g in groups]
    assert sorted(names) == sorted([sorted(["copy_exact.jpg", originals[0].name]),
                                    sorted(["copy_recompressed.jpg", originals[1].name])])  # fmt: skip
    exact = next(g for g in groups if any("copy_exact" in p.path for p in g.photos))
    assert max(p.distance for p in exact.photos) < 1e-5


def test_the_server_and_cli_defaults_are_the_python_apis():
    # Settings (indexer) cannot import the searcher's constants; this keeps them the same numbers.
    from indexer.settings import Settings
    from searcher.expansion import EXPAND
    from searcher.rerank import RERANK

    assert (Settings().rerank, Settings().expand) == (RERANK, EXPAND) == (100, 2)


def test_a_searcher_used_as_a_context_closes_its_index(sample_index, default_model, sample_photos):
    """`with Searcher(...)` (what the CLI's query and dedup do) lets go of the index's files."""
    from pathlib import Path

    from indexer.embedding.config import RuntimeOptions
    from tests.cli import run_cli

    proc = Path("/proc/self/fd")
    if not proc.is_dir():
        pytest.skip("needs /proc to count open files")
    database = str(sample_index / "index.db")

    def handles() -> int:
        return sum(1 for fd in proc.iterdir() if str(fd.resolve()).startswith(database))

    before = handles()
    with Searcher(sample_index, RuntimeOptions(device="cpu", workers=0), model=default_model) as searcher:
        searcher.query(sample_photos[0], k=3)
        assert handles() > before
    assert handles() == before
    assert run_cli("query", str(sample_photos[0]), "-k", "3", "--index", str(sample_index)).returncode == 0
    assert handles() == before


def test_a_phone_heic_is_indexed_and_searched_from_its_embedded_thumbnail(tmp_path, embedder):
    from indexer.embedding.embedder import Embedder
    from indexer.indexing import index_photos
    from indexer.settings import Settings

    photos = tmp_path / "photos"
    photos.mkdir()
    heic = photos / "phone.heic"  # as an iPhone stores it: a 320 x 240 thumbnail inside
    photo = Image.open(sorted(SAMPLES.glob("*.jpg"))[7]).convert("RGB").resize((1600, 1200), Image.Resampling.BICUBIC)
    photo.save(heic, format="HEIF", quality=80, thumbnails=[320], enc_params={"preset": "ultrafast"})
    for p in sorted(SAMPLES.glob("*.jpg"))[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    settings = Settings.load(env={}, index_dir=tmp_path / "index", workers=0)
    index_photos([photos], settings, embedder=embedder)
    with Searcher(settings.index_dir, model=embedder.model) as searcher:
        assert searcher.embedder.config.thumbnail_side == 192
        for query in (heic, heic.read_bytes()):
            first = searcher.query(query, k=2)[0]
            assert first.path == str(heic) and first.distance < 1e-3
            assert (first.width, first.height) == (1600, 1200)  # the file's own size
        stored = searcher.embed([heic])[0]
        full = Embedder(embedder.config.replace(heif_thumbnails=False), embedder.options, model=embedder.model).embed([heic])[0]
        assert 1e-4 < np.linalg.norm(stored - full) < 0.3  # the thumbnail is used; bench/decode.py measures the cost
        exported = io.BytesIO()
        photo.save(exported, "JPEG", quality=92)  # the same photo exported as a JPEG still finds it first
        assert searcher.query(exported.getvalue(), k=1)[0].path == str(heic)


def test_a_large_jpeg_is_indexed_and_searched_from_one_reduced_decode(tmp_path, embedder):
    from indexer.embedding.embedder import Embedder
    from indexer.indexing import index_photos
    from indexer.settings import Settings

    photos = tmp_path / "photos"
    photos.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    big = photos / "big.jpg"
    Image.open(sorted(SAMPLES.glob("*.jpg"))[7]).resize((2400, 1800), Image.Resampling.BICUBIC).save(big, quality=92, exif=exif)
    for p in sorted(SAMPLES.glob("*.jpg"))[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    settings = Settings.load(env={}, index_dir=tmp_path / "index", workers=0)
    index_photos([photos], settings, embedder=embedder)
    with Searcher(settings.index_dir, model=embedder.model) as searcher:
        assert searcher.embedder.config.decode_side == 384  # a 1/4 decode (600 x 450) keeps 450 >= 384
        for query in (big, big.read_bytes()):
            first = searcher.query(query, k=2)[0]
            assert first.path == str(big) and first.distance < 1e-3
            assert (first.width, first.height) == (1800, 2400)  # the file's own size, turned as shown
        stored = searcher.embed([big])[0]
        full = Embedder(embedder.config.replace(reduced_decode=False), embedder.options, model=embedder.model).embed([big])[0]
        assert 1e-4 < np.linalg.norm(stored - full) < 0.1  # the setting is used, and costs ~nothing
