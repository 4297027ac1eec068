"""`--engine ray` on a real local Ray instance: the local engine's vectors, its incremental rules, and a kill."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from indexer.indexing import index_photos
from indexer.settings import Settings
from indexer.storage import PhotoIndex
from tests.conftest import ROOT, SAMPLES

pytest.importorskip("ray", reason="the [test] extra brings Ray")


def test_a_killed_ray_run_leaves_the_index_as_it_was_and_a_rerun_finishes(ray_local, embedder, tmp_path, caplog):
    """(tests/test_readme.py checks the Ray engine's vectors against the local engine's on the samples.)"""
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted(SAMPLES.glob("*.jpg"))[:4]:
        shutil.copy(source, photos)
    index_dir = tmp_path / "index"
    settings = Settings.load(env={}, index_dir=index_dir, engine="ray", ray_address=ray_local, workers=0, batch_size=4)
    assert index_photos([photos], settings, embedder=embedder).added == 4
    for source in sorted(SAMPLES.glob("*.jpg"))[4:16]:
        shutil.copy(source, photos)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    command = [sys.executable, "-m", "api", "index", str(photos), "--index", str(index_dir), "--engine", "ray",
               "--ray-address", ray_local, "--batch-size", "4"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until the job is under way, then kill the writer and everything it started
        if "ray: 13 photo(s) to embed" in line or time.monotonic() > deadline:
            break
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    index = PhotoIndex.open(index_dir)
    try:
        assert index.consistency(thorough=True).ok and index.counts()["photos"] == 4  # as it was
    finally:
        index.close()
    caplog.clear()
    summary = index_photos([photos], settings, embedder=embedder)
    assert (summary.added, summary.unchanged, summary.failed) == (12, 4, 1)
    assert summary.failures[0][0].endswith("broken.jpg")
    sent = next(r.getMessage() for r in caplog.records if "photo(s) to embed" in r.getMessage())
    to_embed, from_shards = (int(w) for w in re.findall(r"(\d+) ", sent)[:2])
    assert to_embed + from_shards == 13  # the 4 indexed photos never went to the cluster
    again = index_photos([photos], settings, embedder=embedder)
    assert (again.unchanged, again.skipped, again.added) == (16, 1, 0)
    index = PhotoIndex.open(index_dir)
    try:
        assert index.consistency(thorough=True).ok and index.counts()["photos"] == 16
    finally:
        index.close()
