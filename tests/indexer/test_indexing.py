"""Indexing real photo folders: incremental runs, bad files, mismatched settings, the writer lock."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.errors import IndexLockedError, IndexMismatchError
from indexer.storage import PhotoIndex
from indexer.indexing import index_photos
from indexer.storage.lock import WriteLock
from indexer.settings import Settings
from indexer.storage.rows import Failure, Photo
from tests.conftest import make_photo


@pytest.fixture
def settings(tmp_path):
    return Settings.load(env={}, index_dir=tmp_path / "index", workers=0, batch_size=8, checkpoint_every=4)


def rows(index_dir):
    index = PhotoIndex.open(index_dir)
    with Session(index.engine) as session:
        found = {Path(p.path).name: p for p in session.scalars(select(Photo))}
    assert index.consistency().ok
    index.close()
    return found


def test_incremental_add_change_move_delete(tmp_path, settings, embedder):
    photos = tmp_path / "photos"
    for i in range(5):
        make_photo(photos / f"p{i}.png", i)
    first = index_photos([photos], settings, embedder=embedder)
    assert (first.added, first.failed) == (5, 0)
    before = rows(settings.index_dir)

    again = index_photos([photos], settings, embedder=embedder)
    assert (again.added, again.unchanged) == (0, 5)
    assert first.stage_seconds["encode"] > 0 and again.stage_seconds.get("encode", 0.0) == 0.0  # per run, not cumulative

    make_photo(photos / "p0.png", 100)  # changed content
    os.utime(photos / "p0.png", (1, 1))
    (photos / "sub").mkdir()
    shutil.move(photos / "p1.png", photos / "sub" / "renamed.png")  # moved
    (photos / "p2.png").unlink()  # deleted
    make_photo(photos / "p5.png", 5)  # new
    os.utime(photos / "p3.png", (2, 2))  # touched, same bytes
    third = index_photos([photos], settings, embedder=embedder)
    assert (third.added, third.updated, third.moved, third.removed, third.unchanged) == (1, 1, 1, 1, 2)
    after = rows(settings.index_dir)
    assert set(after) == {"p0.png", "renamed.png", "p3.png", "p4.png", "p5.png"}
    assert after["renamed.png"].id == before["p1.png"].id  # kept its vector, no re-embedding
    assert after["p0.png"].id != before["p0.png"].id  # a changed photo gets a new row and vector
    assert after["p3.png"].id == before["p3.png"].id


def test_no_prune_keeps_deleted_photos(tmp_path, settings, embedder):
    photos = tmp_path / "photos"
    for i in range(3):
        make_photo(photos / f"p{i}.png", i)
    index_photos([photos], settings, embedder=embedder)
    (photos / "p0.png").unlink()
    summary = index_photos([photos], settings, prune=False, embedder=embedder)
    assert summary.removed == 0 and len(rows(settings.index_dir)) == 3


def test_bad_files_are_skipped_recorded_and_counted(tmp_path, settings, embedder):
    photos = tmp_path / "photos"
    make_photo(photos / "good.jpg", 1)
    make_photo(photos / "good2.webp", 2, fmt="WEBP")
    make_photo(photos / "good3.bmp", 3)
    make_photo(photos / "good4.tiff", 4)
    Image.new("RGB", (80, 60), "teal").save(photos / "good5.heic", format="HEIF")
    make_photo(photos / "good6.jfif", 6, fmt="JPEG")  # a browser's download on Windows
    make_photo(photos / "good7.avif", 7, fmt="AVIF")
    Image.open(make_photo(tmp_path / "canon.png", 8)).save(photos / "good8.HIF", format="HEIF")  # a camera's HEIF
    (photos / "zero.jpg").write_bytes(b"")
    good = make_photo(tmp_path / "big.jpg", 5, size=(400, 300)).read_bytes()
    (photos / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (photos / "notes.png").write_text("not an image")
    Image.new("1", (9000, 9000)).save(photos / "bomb.png")
    locked = make_photo(photos / "locked.png", 6)
    locked.chmod(0)
    (photos / ".hidden.jpg").write_bytes(good)
    (photos / "readme.txt").write_text("ignored: not a photo extension")
    summary = index_photos([photos], settings, embedder=embedder)
    reasons = dict((Path(p).name, r) for p, r in summary.failures)
    expected_failures = {"zero.jpg", "truncated.jpg", "notes.png", "bomb.png"}
    if os.geteuid() != 0:  # root can read a chmod 0 file
        expected_failures.add("locked.png")
    assert expected_failures <= set(reasons)
    assert "empty" in reasons["zero.jpg"] and "not an image" in reasons["notes.png"]
    assert "too large" in reasons["bomb.png"]
    assert summary.added == 8 + (os.geteuid() == 0)
    assert summary.failed == len(reasons)
    index = PhotoIndex.open(settings.index_dir)
    with Session(index.engine) as session:
        assert {Path(f.path).name for f in session.scalars(select(Failure))} == set(reasons)
    again = index_photos([photos], settings, embedder=embedder)
    assert again.skipped == len(reasons) and again.failed == 0  # unchanged bad files are not retried


def test_symlinks_are_followed_only_when_asked_and_never_loop(tmp_path, settings, embedder):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    make_photo(photos / "a.png", 1)
    make_photo(elsewhere / "b.png", 2)
    (photos / "link").symlink_to(elsewhere)
    (elsewhere / "loop").symlink_to(photos)
    assert index_photos([photos], settings, embedder=embedder).added == 1
    following = Settings.load(env={}, index_dir=settings.index_dir, workers=0, follow_symlinks=True)
    assert index_photos([photos], following, embedder=embedder).added == 1


def test_nas_thumbnails_and_recycle_bins_are_left_out_and_excludes_prune(tmp_path, settings, embedder):
    from tests.cli import run_cli

    photos = tmp_path / "photos"
    make_photo(photos / "a.jpg", 1)
    make_photo(photos / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_XL.jpg", 1)  # a Synology NAS's thumbnail of a.jpg
    make_photo(photos / "#recycle" / "old.png", 2)
    make_photo(photos / "Screenshots" / "s.png", 3)
    make_photo(photos / "Screenshots" / "keep.png", 4)
    first = index_photos([photos], settings, embedder=embedder)
    assert first.added == 3 and sorted(first.excluded) == [str(photos / "#recycle"), str(photos / "@eaDir")]
    assert set(rows(settings.index_dir)) == {"a.jpg", "s.png", "keep.png"}
    # An exclude given later takes out what was indexed under it; patterns match file names too.
    r = run_cli("index", str(photos), "--index", str(settings.index_dir), "--exclude", "s.*", "--exclude", "@eaDir")
    assert r.returncode == 0 and "removed 1," in r.stdout and "3 folder(s) or photo(s) left out" in r.stdout, r.stdout
    assert set(rows(settings.index_dir)) == {"a.jpg", "keep.png"}
    # Without the defaults the NAS's copies come in; a root is never excluded: it was asked for.
    everything = Settings.load(env={"DIFFSEARCH_DEFAULT_EXCLUDES": "0"}, index_dir=settings.index_dir, workers=0)
    assert index_photos([photos], everything, embedder=embedder).added == 3
    alone = Settings.load(env={}, index_dir=tmp_path / "nas-index", workers=0)
    assert index_photos([photos / "@eaDir"], alone, embedder=embedder).added == 1


def test_other_settings_fail_with_a_message_naming_both(tmp_path, settings, embedder):
    make_photo(tmp_path / "photos" / "a.png", 1)
    index_photos([tmp_path / "photos"], settings, embedder=embedder)
    default_t = settings.embedding_config().timestep
    other = Settings.load(env={}, index_dir=settings.index_dir, workers=0, timestep=default_t * 2)
    with pytest.raises(IndexMismatchError, match=f"timestep: index has {default_t}, requested {default_t * 2}"):
        index_photos([tmp_path / "photos"], other, embedder=embedder)


def test_one_writer_at_a_time(tmp_path, settings, embedder):
    settings.index_dir.mkdir(parents=True)
    with WriteLock(settings.index_dir):
        with pytest.raises(IndexLockedError, match=str(os.getpid())):
            index_photos([tmp_path], settings, embedder=embedder)


def test_settings_from_environment(tmp_path):
    s = Settings.load(env={"DIFFSEARCH_INDEX_DIR": str(tmp_path), "DIFFSEARCH_TIMESTEP": "50", "DIFFSEARCH_BLOCKS": "latent,mid"})
    assert s.index_dir == tmp_path and s.embedding_config().timestep == 50
    assert s.embedding_config().blocks == ("latent", "mid")
    assert Settings.load(env={"DIFFSEARCH_TIMESTEP": "50"}, timestep=20).embedding_config().timestep == 20


FORK_AFTER_A_DROPPED_MODEL = """
import gc, sys
from pathlib import Path
import indexer.indexing as indexing
from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.embedding.model import load_model
from indexer.settings import Settings

real_init = indexing._init_worker
def init_and_collect(*args):
    real_init(*args)
    gc.collect()  # what a worker's own allocations trigger sooner or later
indexing._init_worker = init_and_collect

photos = sorted(Path("data/samples").glob("*.jpg"))[:8]
out = Path(sys.argv[1])
options = RuntimeOptions(device="cpu", runtime="openvino", cache_dir=str(out / "cache"))
dropped = Embedder(EmbeddingConfig(), options, model=load_model("default"))
dropped.embed(photos[:2])
dropped.cycle = dropped  # only the garbage collector can free it
gc.collect(); gc.disable()  # old, and not yet collected when the workers fork
del dropped
embedder = Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu", batch_size=4, workers=2), model=load_model("default"))
print("added", indexing.index_photos(photos, Settings.load(env={}, index_dir=out / "index"), embedder=embedder).added)
"""


def test_decode_workers_start_cleanly_after_a_model_was_dropped(tmp_path):
    """A worker that garbage-collects an OpenVINO model it inherited used to hang in its destructor
    (its threads live in the parent only); workers now fork with nothing left to collect."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    run = subprocess.run([sys.executable, "-c", FORK_AFTER_A_DROPPED_MODEL, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0 and "added 8" in run.stdout, run.stderr[-2000:]
