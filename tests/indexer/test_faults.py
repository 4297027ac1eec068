"""The audit's write-path findings, each reproduced: pruning, FIFOs, links, signals, locks, damaged files."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.embedding.embedder import Embedder
from indexer.errors import IndexCorruptError, IndexReadOnlyError
from indexer.storage import PhotoIndex
from indexer.indexing import index_photos
from indexer.storage.lock import WriteLock
from indexer.settings import Settings
from indexer.storage.rows import Failure
from indexer.storage.vectors import VECTORS_FILE
from searcher import Searcher
from tests.cli import run_cli
from tests.conftest import ROOT, make_photo


@pytest.fixture
def settings(tmp_path):
    return Settings.load(env={}, index_dir=tmp_path / "index", workers=0, batch_size=8)


def photo_dir(tmp_path, n=4, name="photos"):
    folder = tmp_path / name
    for i in range(n):
        make_photo(folder / f"p{i}.png", i)
    return folder


def failures(index_dir):
    index = PhotoIndex.open(index_dir)
    with Session(index.engine) as session:
        out = {Path(f.path).name: f.reason for f in session.scalars(select(Failure))}
    index.close()
    return out


def start_index(photos: Path, index_dir: Path, *flags: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "api", "index", str(photos), "--index", str(index_dir), *flags], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip


def test_a_missing_root_prunes_nothing_and_fails_the_command(tmp_path, settings, embedder):
    photos = photo_dir(tmp_path)
    index_photos([photos], settings, embedder=embedder)
    photos.rename(tmp_path / "unplugged")
    summary = index_photos([photos], settings, embedder=embedder)
    assert (summary.removed, summary.kept, summary.missing_roots) == (0, 4, [str(photos)])
    assert PhotoIndex.open(settings.index_dir).counts()["photos"] == 4
    r = run_cli("index", str(photos), "--index", str(settings.index_dir), "--workers", "0")
    assert r.returncode == 1 and "not found" in r.stderr and "removed 0" in r.stdout


def test_an_unreadable_folder_keeps_its_photos_and_is_recorded(tmp_path, settings, embedder, monkeypatch):
    photos = photo_dir(tmp_path)
    make_photo(photos / "locked" / "inner.png", 9)
    index_photos([photos], settings, embedder=embedder)
    real_scandir = os.scandir

    def scandir(path):  # what chmod 000 does for a non-root user
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr("indexer.files.os.scandir", scandir)
    (photos / "p0.png").unlink()
    summary = index_photos([photos], settings, embedder=embedder)
    assert (summary.removed, summary.kept) == (1, 1)  # p0 really is gone; inner.png is only unreadable
    assert "Permission denied" in failures(settings.index_dir)["locked"]
    monkeypatch.undo()
    index_photos([photos], settings, embedder=embedder)
    assert "locked" not in failures(settings.index_dir)  # readable again: its failure is cleared


def test_a_fifo_broken_link_and_deleted_bad_file_are_recorded_without_hanging(tmp_path, settings, embedder):
    photos = photo_dir(tmp_path, n=2)
    os.mkfifo(photos / "pipe.jpg")
    os.symlink(photos / "nowhere.jpg", photos / "broken.jpg")
    (photos / "empty.jpg").write_bytes(b"")
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("s", index_photos([photos], settings, embedder=embedder)))
    worker.start()
    worker.join(120)
    assert "s" in done, "indexing hung on a FIFO"
    found = failures(settings.index_dir)
    assert "FIFO" in found["pipe.jpg"] and "broken" in found["broken.jpg"] and "empty" in found["empty.jpg"]
    (photos / "empty.jpg").unlink()
    (photos / "pipe.jpg").unlink()
    again = index_photos([photos], settings, embedder=embedder)
    assert set(failures(settings.index_dir)) == {"broken.jpg"} and again.skipped == 1  # gone files: failures pruned


def test_sigterm_checkpoints_like_ctrl_c(tmp_path):
    photos = photo_dir(tmp_path, n=48)
    index_dir = tmp_path / "index"
    proc = start_index(photos, index_dir, "--batch-size", "2", "--workers", "0", "--checkpoint-every", "100000", stderr=subprocess.PIPE)
    seen = b""
    while not any(int(n) > 0 for n in re.findall(rb"(\d+)/48", seen)):  # a photo embedded, none saved yet
        seen += os.read(proc.stderr.fileno(), 4096)
        assert proc.poll() is None, seen.decode(errors="replace")
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    index = PhotoIndex.open(index_dir)
    report, counts = index.consistency(), index.counts()
    index.close()
    assert report.ok and counts["photos"] > 0, counts  # without the handler nothing was saved (no checkpoint yet)


def test_a_killed_writers_lock_is_free_at_once_and_its_temp_file_is_cleaned(tmp_path, settings, embedder):
    photos = photo_dir(tmp_path, n=64)
    index_dir = tmp_path / "index"
    proc = start_index(photos, index_dir, "--batch-size", "4", "--workers", "2", "--checkpoint-every", "4")
    deadline = time.monotonic() + 120
    while not (index_dir / VECTORS_FILE).exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    with WriteLock(index_dir):  # decode workers may still be alive; they hold no copy of the lock
        pass
    (index_dir / VECTORS_FILE).with_suffix(".tmp").write_bytes(b"half a save")
    summary = index_photos([photos], settings.__class__.load(env={}, index_dir=index_dir, workers=0), embedder=embedder)
    assert summary.added + summary.unchanged == 64
    assert not (index_dir / VECTORS_FILE).with_suffix(".tmp").exists()


def test_repair_recovers_unreadable_vectors_nan_vectors_and_a_corrupt_database(tmp_path, settings, embedder):
    photos = photo_dir(tmp_path, n=5)
    index_photos([photos], settings, embedder=embedder)
    index_dir = str(settings.index_dir)
    vectors = settings.index_dir / VECTORS_FILE
    vectors.write_bytes(b"garbage, not FAISS")
    assert "check --repair" in run_cli("index", str(photos), "--index", index_dir).stderr
    fixed = run_cli("check", "--repair", "--index", index_dir)
    assert fixed.returncode == 0 and "5 re-embedded" in fixed.stdout and "repaired: 5 rows, 5 vectors" in fixed.stdout, fixed.stdout + fixed.stderr

    index = PhotoIndex.open(settings.index_dir)
    ids = index.vectors.ids()
    index.vectors.remove(ids[:1])
    index.vectors.add(ids[:1], np.full((1, index.settings.dim), np.nan, np.float32))
    index.vectors.save()
    index.close()
    found = run_cli("check", "--index", index_dir)
    assert found.returncode == 1 and "1 non-finite" in found.stdout
    assert run_cli("check", "--repair", "--index", index_dir).returncode == 0

    db = settings.index_dir / "index.db"
    data = bytearray(db.read_bytes())
    data[:100] = b"\0" * 100  # the header: SQLite no longer recognises the file
    db.write_bytes(bytes(data))
    for command in (["stats"], ["check"], ["query", str(photos / "p1.png")], ["dedup"], ["serve", "--port", "1"]):
        r = run_cli(*command, "--index", index_dir)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "check --repair" in r.stderr, (command, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    rebuilt = run_cli("check", "--repair", "--index", index_dir)
    assert rebuilt.returncode == 0 and "fresh scan" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    assert Searcher(index_dir, model=embedder.model).query(photos / "p3.png", k=1)[0].path == str(photos / "p3.png")


def test_a_read_only_index_is_searchable_and_refuses_writes_clearly(tmp_path, settings, embedder, monkeypatch):
    photos = photo_dir(tmp_path, n=3)
    index_photos([photos], settings, embedder=embedder)
    # root ignores permission bits, so "cannot write here" is simulated where it is decided
    monkeypatch.setattr("indexer.storage.folder.is_writable", lambda _d: False)
    searcher = Searcher(settings.index_dir, model=embedder.model)
    assert searcher.index.read_only and searcher.query(photos / "p2.png", k=1)[0].path == str(photos / "p2.png")
    with pytest.raises(IndexReadOnlyError, match="permissions"):
        index_photos([photos], settings, embedder=embedder)


def test_missing_vectors_file_is_damage_not_an_empty_result(tmp_path, settings, embedder):
    photos = photo_dir(tmp_path, n=3)
    index_photos([photos], settings, embedder=embedder)
    (settings.index_dir / VECTORS_FILE).unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        Searcher(settings.index_dir, model=embedder.model).query(photos / "p0.png")
    r = run_cli("query", str(photos / "p0.png"), "--index", str(settings.index_dir))
    assert r.returncode == 2 and "missing" in r.stderr


@pytest.mark.parametrize("when", ["before the vectors", "after the vectors"])
def test_an_interrupt_while_a_batch_is_stored_takes_the_whole_batch_back(tmp_path, settings, embedder, monkeypatch, when):
    """Ctrl-C or SIGTERM can land between a batch's rows and its vectors: the checkpoint must not
    commit rows without vectors (or keep vectors without rows), and the next run finishes the job."""
    from indexer.storage.folder import FolderIndex

    photos = photo_dir(tmp_path, n=6)
    original, calls = FolderIndex.add_vectors, []

    def interrupted(self, session, ids, vectors):
        calls.append(len(ids))
        if len(calls) == 2:
            if when == "after the vectors":
                original(self, session, ids, vectors)
            raise KeyboardInterrupt
        original(self, session, ids, vectors)

    monkeypatch.setattr(FolderIndex, "add_vectors", interrupted)
    two_per_batch = settings.__class__.load(env={}, index_dir=settings.index_dir, workers=0, batch_size=2)
    embedder = Embedder(embedder.config, two_per_batch.runtime_options(), model=embedder.model)
    with pytest.raises(KeyboardInterrupt):
        index_photos([photos], two_per_batch, embedder=embedder)
    index = PhotoIndex.open(settings.index_dir)
    report, counts = index.consistency(), index.counts()
    index.close()
    assert report.ok and counts["photos"] == 2 and counts["vectors"] == 2, (report, counts)
    monkeypatch.setattr(FolderIndex, "add_vectors", original)
    summary = index_photos([photos], two_per_batch, embedder=embedder)
    assert summary.added == 4 and summary.unchanged == 2
