"""The Postgres + pgvector store, against a real Postgres server: same answers as FAISS + SQLite."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.errors import ConfigError, DatabaseUnavailableError, IndexLockedError, IndexMismatchError
from indexer.indexing import index_photos
from indexer.settings import Settings
from indexer.storage import IndexSettings, PhotoIndex
from indexer.storage.rows import Photo
from searcher import Searcher, find_duplicates
from tests.conftest import SAMPLES, make_photo


def pg_settings(url: str, tmp_path: Path, **flags: object) -> Settings:
    return Settings.load(env={}, database=url, index_dir=tmp_path / "cache", workers=0, batch_size=16, **flags)


def test_samples_give_the_same_vectors_and_top10_as_faiss(pg_url, tmp_path, searcher, embedder, default_model, sample_photos):
    summary = index_photos([SAMPLES], pg_settings(pg_url, tmp_path), embedder=embedder)
    assert (summary.added, summary.failed) == (len(sample_photos), 0)
    pg = Searcher(pg_url, RuntimeOptions(device="cpu", workers=0), model=default_model)
    try:
        assert pg.index.vectors.kind == "pgvector exact" and len(pg) == len(searcher)
        assert pg.index.consistency(thorough=True).ok
        queries = np.stack([searcher.index.vectors.reconstruct(i) for i in searcher.index.vectors.ids()[:12]])
        all_ids = pg.index.vectors.ids()
        assert pg.index.vectors.extent() == (len(all_ids), int(all_ids.max()))
        ids = all_ids[:5].tolist()
        many = pg.index.vectors.reconstruct_many([*ids, 2**40])  # one query; an impossible id is skipped
        assert sorted(many) == sorted(ids) and np.allclose(many[ids[2]], pg.index.vectors.reconstruct(ids[2]))
        for faiss_hits, pg_hits in zip(searcher.query_vectors(queries, k=10), pg.query_vectors(queries, k=10)):
            assert [h.path for h in pg_hits] == [h.path for h in faiss_hits]
            np.testing.assert_allclose([h.distance for h in pg_hits], [h.distance for h in faiss_hits], atol=1e-5)
        by_path = {r.path: r for r in searcher.query(sample_photos[3], k=5)}
        for hit in pg.query(sample_photos[3], k=5):  # re-ranked alike: Postgres keeps the latents too
            assert hit.path in by_path and abs(hit.distance - by_path[hit.path].distance) < 1e-5
            assert hit.match is not None and abs(hit.match - by_path[hit.path].match) < 1e-5
        assert [h.path for h in pg.query(sample_photos[3], k=20)] == [h.path for h in searcher.query(sample_photos[3], k=20)]  # expanded alike
        only = str(SAMPLES / sample_photos[5].name)
        assert [h.path for h in pg.query(sample_photos[5], k=3, path_prefix=only)] == [only]
        assert len(find_duplicates(pg)) == len(find_duplicates(searcher))
    finally:
        pg.close()


def test_incremental_runs_move_and_prune_like_the_folder_index(pg_url, tmp_path, embedder):
    photos = tmp_path / "photos"
    for i in range(4):
        make_photo(photos / f"p{i}.png", i)
    settings = pg_settings(pg_url, tmp_path)
    assert index_photos([photos], settings, embedder=embedder).added == 4
    assert index_photos([photos], settings, embedder=embedder).unchanged == 4
    index = PhotoIndex.open(pg_url)
    with Session(index.engine) as session:
        moved_id = next(p.id for p in session.query(Photo) if p.path.endswith("p1.png"))
    index.close()
    shutil.move(photos / "p1.png", photos / "renamed.png")
    os.unlink(photos / "p2.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    summary = index_photos([photos], settings, embedder=embedder)
    assert (summary.moved, summary.removed, summary.failed, summary.unchanged) == (1, 1, 1, 2)
    index = PhotoIndex.open(pg_url)
    try:
        with Session(index.engine) as session:
            assert next(p.id for p in session.query(Photo) if p.path.endswith("renamed.png")) == moved_id
        assert index.counts() == {"photos": 3, "vectors": 3, "failures": 1}
        assert index.consistency(thorough=True).ok and index.disk_bytes() > 0
    finally:
        index.close()


def fake_settings(dim: int, index_type: str, model: str = "m" * 16) -> IndexSettings:
    return IndexSettings(EmbeddingConfig(), model, model, dim, index_type)


def fill(index: PhotoIndex, vectors: np.ndarray, folder: str = "/photos") -> list[int]:
    with Session(index.engine) as session, session.begin():
        rows = [
            Photo(path=f"{folder}/{n // 1000}/{n}.jpg", content_hash=str(n), size=1, mtime=0.0, width=1, height=1, format="JPEG", taken_at=None)
            for n in range(len(vectors))
        ]
        session.add_all(rows)
        session.flush()
        ids = [r.id for r in rows]
        index.add_vectors(session, np.array(ids), vectors)
    return ids


def test_hnsw_recall_and_filtered_search_on_synthetic_vectors(pg_url):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = PhotoIndex.open_for_writing(pg_url, fake_settings(32, "HNSW16"))
    try:
        ids = np.array(fill(index, data))
        assert index.vectors.kind == "pgvector HNSW (m=16)"
        queries = rng.normal(size=(50, 32)).astype(np.float32)
        exact = np.argsort(((queries[:, None, :] - data[None]) ** 2).sum(-1), axis=1)[:, :10]
        _, found = index.vectors.search(queries, 10)
        recall = np.mean([len(set(ids[e]) & set(f)) / 10 for e, f in zip(exact, found)])
        assert recall >= 0.95, recall
        # A filter that keeps 1 photo in 2: iterative scans still fill k results, all inside it.
        _, found = index.vectors.search(queries[:5], 10, path_prefix="/photos/1/")
        assert (found >= 0).all() and set(found.ravel()) <= set(ids[1000:2000].tolist())
    finally:
        index.close()


def test_one_writer_at_a_time_and_settings_are_checked(pg_url):
    with PhotoIndex.write_lock(pg_url):
        with pytest.raises(IndexLockedError, match="another diffsearch process"):
            PhotoIndex.write_lock(pg_url).__enter__()
    with PhotoIndex.write_lock(pg_url):  # released on exit
        pass
    PhotoIndex.open_for_writing(pg_url, fake_settings(8, "Flat")).close()
    with pytest.raises(IndexMismatchError, match="model weights: index has m+, requested o+"):
        PhotoIndex.open_for_writing(pg_url, fake_settings(16, "Flat", model="o" * 16))
    with pytest.raises(ConfigError, match="HNSW"):
        PhotoIndex.open_for_writing(pg_url, fake_settings(8, "IVF256,Flat"))


def test_an_unreachable_server_is_one_clear_error_without_the_password(tmp_path):
    url = f"postgresql://someone:s3cret@/nowhere?host={tmp_path}"
    with pytest.raises(DatabaseUnavailableError) as info:
        PhotoIndex.open(url)
    assert "cannot use the database" in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="postgresql://"):
        Settings.load(env={}, database="mysql://x/y")


def test_check_finds_and_repair_fixes_a_row_that_lost_its_vector(pg_url, tmp_path, embedder):
    from sqlalchemy import text

    from indexer.repair import repair_index

    photos = tmp_path / "photos"
    for i in range(3):
        make_photo(photos / f"p{i}.png", i)
    index_photos([photos], pg_settings(pg_url, tmp_path), embedder=embedder)
    index = PhotoIndex.open(pg_url)
    with index.engine.begin() as conn:  # as a careless manual edit of the database would
        conn.execute(text("DELETE FROM photo_vectors WHERE id = (SELECT min(id) FROM photo_vectors)"))
    report = index.consistency(thorough=True)
    index.close()
    assert not report.ok and len(report.rows_without_vectors) == 1
    done = repair_index(pg_url, lambda _stored: embedder)
    assert done.reembedded == 1 and done.actions
    index = PhotoIndex.open(pg_url)
    try:
        assert index.consistency(thorough=True).ok and index.counts() == {"photos": 3, "vectors": 3, "failures": 0}
    finally:
        index.close()
