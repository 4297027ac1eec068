"""Camera RAW files: read from the camera's preview or from the sensor, upright, in any batch, by
name or by content; bad ones skipped with a reason like any bad photo."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.errors import InvalidImageError
from indexer.files import is_photo_name
from indexer.images import load_image
from indexer.raw import _rawpy
from tests.conftest import SAMPLES
from tests.indexer.raw_files import dng, jpeg

try:
    _rawpy()  # as the library imports it (one OpenMP thread: tests here fork decode workers after)
except ImportError:
    pytest.skip("rawpy is not installed", allow_module_level=True)

PHOTO = SAMPLES / "Leopards_image_0004.jpg"
TURNED = Image.Transpose.ROTATE_270  # what TIFF orientation 6 asks of a viewer: 90 degrees clockwise


def photo() -> Image.Image:
    """The scene the tests' camera saw: a sample photo at 4x (768 x 512), a sensor's size in small."""
    small = Image.open(PHOTO).convert("RGB")
    return small.resize((small.width * 4, small.height * 4), Image.Resampling.BICUBIC)


def mean_error(image: Image.Image, expected: Image.Image) -> float:
    return float(np.abs(np.asarray(image.resize(expected.size), float) - np.asarray(expected, float)).mean())


def test_the_cameras_preview_is_read_where_it_is_large_enough():
    data = dng(photo(), preview=jpeg(photo()))
    image, info = load_image(data)
    assert image.mode == "RGB" and image.size == (768, 512)
    assert mean_error(image, photo()) < 2  # the preview's JPEG, not the sensor's samples
    assert (info.width, info.height, info.format) == (768, 512, "RAW")
    assert info.taken_at == datetime(2024, 5, 6, 7, 8, 9)
    assert load_image(data, 128)[0].size == (192, 128)  # the preview's JPEG decodes reduced, as any JPEG
    # Pillow alone sees the DNG as a TIFF and shows its 16 x 12 first image.
    assert Image.open(io.BytesIO(data)).size == (16, 12)


def test_the_sensor_is_demosaiced_where_the_preview_is_too_small():
    data = dng(photo(), preview=jpeg(photo().resize((48, 32))))
    image, info = load_image(data, 128)  # the 32 px preview is short of 128: the sensor, at half size
    assert image.size == (384, 256) and (info.width, info.height) == (768, 512)
    # The scene the sensor saw, in sRGB: LibRaw's automatic brightness lifts it, the colours stay.
    assert mean_error(image, photo()) < 40
    sensor = np.asarray(image, float).reshape(-1, 3)
    scene = np.asarray(photo().resize(image.size), float).reshape(-1, 3)
    assert all(np.corrcoef(sensor[:, c], scene[:, c])[0, 1] > 0.95 for c in range(3))
    # With no size asked, a preview is read where it has half the sensor's shorter side (256).
    enough = load_image(dng(photo(), preview=jpeg(photo().resize((384, 256)))))[0]
    assert enough.size == (384, 256) and mean_error(enough, photo().resize((384, 256))) < 2
    short = load_image(dng(photo(), preview=jpeg(photo().resize((378, 252)))))[0]
    assert short.size == (384, 256) and mean_error(short, photo().resize((384, 256))) > 10
    assert load_image(dng(photo()), 128)[0].size == (384, 256)  # no preview but the tiny first image


@pytest.mark.parametrize("preview", ["camera", "own orientation", "sensor"])
def test_a_turned_camera_is_shown_upright_once(preview):
    upright = photo().transpose(TURNED)
    if preview == "camera":  # a preview as the sensor lies, the RAW saying how to turn it
        data = dng(photo(), preview=jpeg(photo()), orientation=6)
    elif preview == "own orientation":  # a preview that says so itself: turned once, not twice
        data = dng(photo(), preview=jpeg(photo(), orientation=6), orientation=6)
    else:
        data = dng(photo(), orientation=6)
    image, info = load_image(data)
    assert (info.width, info.height) == (512, 768)
    assert mean_error(image, upright) < (2 if preview != "sensor" else 40)
    assert mean_error(image, upright) < mean_error(image.transpose(Image.Transpose.ROTATE_180), upright) - 10


def test_raw_files_are_read_by_name_and_by_content(tmp_path):
    data = dng(photo(), preview=jpeg(photo()))
    for name in ("shot.dng", "SHOT.NEF", "upload.bin", "scan.tif"):
        (tmp_path / name).write_bytes(data)
        image, info = load_image(tmp_path / name)
        assert info.format == "RAW" and image.size == photo().size, name
    for source in (data, io.BytesIO(data)):  # an upload has no name
        assert load_image(source)[1].format == "RAW"
    # A JPEG or a plain TIFF under a RAW name is read as what it is.
    photo().save(tmp_path / "export.cr2", "JPEG")
    photo().save(tmp_path / "plain.tif")
    assert load_image(tmp_path / "export.cr2")[1].format == "JPEG"
    assert load_image(tmp_path / "plain.tif")[1].format == "TIFF"
    assert all(is_photo_name(n) for n in ("a.dng", "b.CR3", "c.nef", "d.ARW", "e.raf", "f.orf", "g.rw2"))


def test_bad_raw_files_fail_with_a_reason(tmp_path):
    data = dng(photo(), preview=jpeg(photo()))
    (tmp_path / "empty.cr2").write_bytes(b"")
    (tmp_path / "notes.arw").write_text("not a photo")
    (tmp_path / "cut.dng").write_bytes(data[: len(data) // 2])  # its sensor data cut short
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(tmp_path / "empty.cr2")
    with pytest.raises(InvalidImageError, match="not an image"):
        load_image(tmp_path / "notes.arw")
    with pytest.raises(InvalidImageError, match="cut.dng: corrupt or truncated image: unreadable camera RAW"):
        load_image(tmp_path / "cut.dng")
    with pytest.raises(InvalidImageError, match="unreadable camera RAW"):  # as an upload, by its content
        load_image(data[: len(data) // 2])


def test_a_folder_of_raw_files_indexes_and_finds_the_photo_they_show(tmp_path, embedder):
    from indexer.indexing import index_photos
    from indexer.settings import Settings

    photos = tmp_path / "photos"
    photos.mkdir()
    data = dng(photo(), preview=jpeg(photo()))
    # A demosaic in this process first: decode workers forked after it once hung in their own
    # (LibRaw's OpenMP pool does not survive fork; `indexer.raw._rawpy` holds it to one thread).
    assert load_image(dng(photo()))[0].size == (384, 256)
    (photos / "IMG_0001.DNG").write_bytes(data)
    (photos / "IMG_0002.dng").write_bytes(dng(photo(), orientation=6))  # no usable preview: the sensor
    (photos / "IMG_0003.NEF").write_bytes(data[: len(data) // 2])  # cut short
    (photos / "IMG_0004.CR2").write_bytes(b"")
    photo().save(photos / "IMG_0001.JPG", quality=92)  # the camera's JPEG twin
    settings = Settings.load(env={}, index_dir=tmp_path / "index", workers=0)
    summary = index_photos([photos], settings, embedder=embedder)
    reasons = {Path(p).name: r for p, r in summary.failures}
    assert "empty" in reasons["IMG_0004.CR2"] and "unreadable camera RAW" in reasons["IMG_0003.NEF"]
    assert summary.added == 3 and summary.failed == 2

    from indexer.embedding.config import RuntimeOptions
    from searcher.searcher import Searcher

    with Searcher(tmp_path / "index", RuntimeOptions(device="cpu", workers=0), model=embedder.model) as searcher:
        found = searcher.query(photos / "IMG_0001.DNG", k=5)
        assert {r.path for r in found[:2]} == {str(photos / "IMG_0001.DNG"), str(photos / "IMG_0001.JPG")}
        assert found[1].distance < 0.1  # the RAW and its JPEG twin
        assert (found[0].width, found[0].height) == (768, 512)
        turned = searcher.query(photo().transpose(TURNED), k=5)  # the sensor's pixels, upright
        assert str(photos / "IMG_0002.dng") in {r.path for r in turned[:2]}
