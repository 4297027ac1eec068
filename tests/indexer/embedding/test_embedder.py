import numpy as np
import pytest

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.errors import InvalidImageError


def test_vectors_are_unit_length_and_deterministic_across_batches_and_order(embedder, sample_photos):
    photos = sample_photos[:9]
    a = embedder.embed(photos)
    assert a.dtype == np.float32 and a.shape == (9, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    for batch_size in (1, 2, 4):
        other = Embedder(embedder.config, RuntimeOptions(batch_size=batch_size, device="cpu"), model=embedder.model)
        b = other.embed(photos[::-1])[::-1]
        assert np.abs(a - b).max() <= 1e-5, batch_size
    single = embedder.embed([photos[3]])
    assert np.abs(single[0] - a[3]).max() <= 1e-5


def test_similar_photos_are_closer_than_different_ones(embedder, sample_photos):
    by_class = {}
    for p in sample_photos:
        by_class.setdefault(p.name.rsplit("_image", 1)[0], []).append(p)
    faces, planes = by_class["Faces_easy"][:3], by_class["airplanes"][:3]
    v = embedder.embed(faces + planes)
    same = np.linalg.norm(v[0] - v[1]), np.linalg.norm(v[3] - v[4])
    cross = np.linalg.norm(v[0] - v[3]), np.linalg.norm(v[1] - v[4])
    assert max(same) < min(cross)


def test_bad_image_raises_invalid_image_error(embedder, tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(InvalidImageError, match="x.jpg"):
        embedder.embed([bad])


def test_fingerprint_tracks_config(embedder):
    other = Embedder(embedder.config.replace(timestep=200), RuntimeOptions(device="cpu"), model=embedder.model)
    assert other.fingerprint != embedder.fingerprint
    latent_only = Embedder(EmbeddingConfig(blocks=("latent",), grid=4, gap=False, projection=False), model=embedder.model)
    assert latent_only.dim == 32 * 16
