import itertools

import numpy as np
import pytest

from indexer.embedding.config import DECODE_SETTINGS, EmbeddingConfig, RuntimeOptions
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


def test_the_bundled_projection_serves_every_decode_setting(embedder):
    """How photos are decoded (reduced JPEGs, HEIC thumbnails, or in full; converted to sRGB or not)
    does not change the features' statistics: the one projection shipped with the model serves each
    combination."""
    assert embedder.config == EmbeddingConfig() and embedder.projection is not None and embedder.dim == 384
    assert set(DECODE_SETTINGS) == {"heif_thumbnails", "reduced_decode", "to_srgb"}
    for decode in ({name: False for name in off} for n in (1, 2, 3) for off in itertools.combinations(DECODE_SETTINGS, n)):
        other = Embedder(embedder.config.replace(**decode), RuntimeOptions(device="cpu"), model=embedder.model)
        assert other.projection is not None and other.projection.digest == embedder.projection.digest, decode
        assert other.fingerprint != embedder.fingerprint  # but the vectors are not mixed in one index


def test_whole_frame_vectors_match_the_square_and_keep_the_frames_latent(embedder, sample_photos):
    """A whole-frame vector comes from the centre window of the frame's latent: within float noise
    of encoding the centre square alone (the encoder sees a little past the square's edge)."""
    assert embedder.config.frame_aspect > 1
    photos = sample_photos[::7]
    square = Embedder(embedder.config.replace(frame_aspect=1.0), embedder.options, model=embedder.model)
    assert square.projection is not None and square.projection.digest == embedder.projection.digest  # one projection serves both
    frames = [embedder.prepare(p) for p in photos]
    assert len({tuple(f.shape) for f in frames}) > 1 and all(min(f.shape[1:]) == 128 for f in frames)
    done = embedder.embed_frames(frames)
    cosines = (done.vectors * square.embed(photos)).sum(1)
    assert np.median(cosines) > 0.97 and cosines.min() > 0.9, cosines
    for frame, latent in zip(frames, done.latents, strict=True):
        assert latent is not None and latent.dtype == np.float16 and latent.shape == (32, frame.shape[1] // 8, frame.shape[2] // 8)
    again = embedder.embed_frames([frames[1]])  # alone, in a batch of its own shape
    assert np.abs(again.vectors[0] - done.vectors[1]).max() <= 1e-5
    assert np.abs(again.latents[0].astype(np.float32) - done.latents[1].astype(np.float32)).max() <= 1e-2
