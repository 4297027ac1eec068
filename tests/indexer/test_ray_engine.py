"""`--engine ray` on a real local Ray instance: the local engine's vectors, its incremental rules, and a kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from indexer.indexing import index_photos
from indexer.settings import Settings
from indexer.storage import PhotoIndex
from tests.conftest import ROOT, SAMPLES

ray = pytest.importorskip("ray", reason="the [test] extra brings Ray")


@pytest.fixture(scope="session")
def ray_local():  # noqa: ANN201
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def vectors_by_path(location) -> dict[str, np.ndarray]:  # noqa: ANN001
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from indexer.storage.rows import Photo

    index = PhotoIndex.open(location)
    try:
        with Session(index.engine) as session:
            rows = session.execute(select(Photo.path, Photo.id)).all()
        return {path: index.vectors.reconstruct(id_) for path, id_ in rows}
    finally:
        index.close()


def test_ray_engine_gives_the_local_engines_vectors_and_skips_unchanged_photos(ray_local, sample_index, embedder, tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted(SAMPLES.glob("*.jpg"))[:20]:
        shutil.copy(source, photos)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    settings = Settings.load(env={}, index_dir=tmp_path / "index", engine="ray", workers=0, batch_size=8)
    summary = index_photos([photos], settings, embedder=embedder)
    assert (summary.added, summary.failed) == (20, 1)
    assert summary.failures[0][0].endswith("broken.jpg")
    local = {os.path.basename(p): v for p, v in vectors_by_path(sample_index).items()}
    distributed = {os.path.basename(p): v for p, v in vectors_by_path(tmp_path / "index").items()}
    worst = max(float(np.abs(local[name] - vector).max()) for name, vector in distributed.items())
    assert worst <= 1e-5, worst
    assert not (tmp_path / "index" / "ray-shards").exists() or not any((tmp_path / "index" / "ray-shards").rglob("*.parquet"))
    caplog.clear()
    again = index_photos([photos], settings, embedder=embedder)
    assert (again.unchanged, again.added, again.skipped) == (20, 0, 1)
    assert not [r for r in caplog.records if r.name == "indexer.ray_engine"]  # nothing was sent to the cluster


def test_a_killed_ray_run_leaves_the_index_as_it_was_and_a_rerun_finishes(ray_local, embedder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted(SAMPLES.glob("*.jpg"))[:4]:
        shutil.copy(source, photos)
    index_dir = tmp_path / "index"
    settings = Settings.load(env={}, index_dir=index_dir, engine="ray", ray_address=ray_local, workers=0, batch_size=4)
    assert index_photos([photos], settings, embedder=embedder).added == 4
    for source in sorted(SAMPLES.glob("*.jpg"))[4:16]:
        shutil.copy(source, photos)
    command = [sys.executable, "-m", "api", "index", str(photos), "--index", str(index_dir), "--engine", "ray",
               "--ray-address", ray_local, "--batch-size", "4"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until the job is under way, then kill the writer and everything it started
        if "ray: 12 photo(s) to embed" in line or time.monotonic() > deadline:
            break
    time.sleep(4)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    index = PhotoIndex.open(index_dir)
    try:
        assert index.consistency(thorough=True).ok and index.counts()["photos"] == 4  # as it was
    finally:
        index.close()
    summary = index_photos([photos], settings, embedder=embedder)
    assert (summary.added, summary.unchanged, summary.failed) == (12, 4, 0)
    index = PhotoIndex.open(index_dir)
    try:
        assert index.consistency(thorough=True).ok and index.counts()["photos"] == 16
    finally:
        index.close()
