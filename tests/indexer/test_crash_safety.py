"""kill -9 of a real indexing process at several moments, then resume: nothing lost, duplicated or orphaned."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from indexer.storage import PhotoIndex
from indexer.storage.rows import Photo
from tests.cli import run_cli
from tests.conftest import ROOT, make_photo

pytestmark = pytest.mark.slow


def start_indexing(photos: Path, index_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "api", "index", str(photos), "--index", str(index_dir),
           "--batch-size", "4", "--workers", "0", "--checkpoint-every", "4"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def state(index_dir: Path) -> tuple[int, int, bool]:
    index = PhotoIndex.open(index_dir)
    with Session(index.engine) as session:
        rows = session.scalar(select(func.count()).select_from(Photo))
        distinct = session.scalar(select(func.count(func.distinct(Photo.path))))
    report = index.consistency()
    index.close()
    assert rows == distinct, "a photo was indexed twice"
    return rows, report.vectors, report.ok


def wait_for_rows(index_dir: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if state(index_dir)[0] >= at_least:
                return
        except Exception:  # the index may not exist yet
            pass
        time.sleep(0.05)


def test_kill_9_at_several_points_then_resume(tmp_path):
    photos, index_dir = tmp_path / "photos", tmp_path / "index"
    total = 40
    for i in range(total):
        make_photo(photos / f"p{i:02d}.png", i, size=(160, 120))
    kills, progress = 0, [0]
    for target, extra_delay in ((1, 0.0), (8, 0.37), (20, 0.11), (28, 0.6)):
        proc = start_indexing(photos, index_dir)
        wait_for_rows(index_dir, proc, target)
        time.sleep(extra_delay)  # land at different moments: mid-batch, mid-commit, mid-save
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stdout.read().decode()[-3000:]
        rows, vectors, _ = state(index_dir)  # readable and never duplicated, even right after a kill
        progress.append(rows)
    assert kills >= 3, "the indexer finished before it could be killed"
    final = start_indexing(photos, index_dir)
    output = final.communicate(timeout=300)[0].decode()
    assert final.returncode == 0, output
    rows, vectors, ok = state(index_dir)
    assert (rows, vectors, ok) == (total, total, True), output
    assert max(progress) > 0, "no run ever committed progress before its kill"


def test_check_reports_and_repair_fixes(tmp_path, embedder):
    from indexer.indexing import index_photos
    from indexer.settings import Settings

    photos = tmp_path / "photos"
    for i in range(4):
        make_photo(photos / f"p{i}.png", i)
    settings = Settings.load(env={}, index_dir=tmp_path / "index", workers=0)
    index_photos([photos], settings, embedder=embedder)
    index = PhotoIndex.open(settings.index_dir)
    ids = index.vectors.ids()
    index.vectors.remove([ids[0]])  # a row without a vector
    index.vectors.add(np.array([9999]), np.ones((1, index.settings.dim), np.float32))  # a vector without a row
    index.vectors.save()
    index.close()
    run = lambda *args: run_cli(*args, "--index", str(settings.index_dir))  # noqa: E731
    checked = run("check")
    assert checked.returncode == 1 and "1 rows without a vector, 1 vectors without a row" in checked.stdout
    repaired = run("check", "--repair")
    assert repaired.returncode == 0 and "1 re-embedded from their files" in repaired.stdout, repaired.stdout
    assert run("check").stdout.startswith("consistent: 4 rows, 4 vectors")  # the row lost its vector: re-embedded
    assert index_photos([photos], settings, embedder=embedder).unchanged == 4
