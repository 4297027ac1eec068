import io

import numpy as np
import pytest
from PIL import Image

from indexer.errors import InvalidImageError
from indexer.images import MAX_PIXELS, crop_for_embedding, load_image, prepare, square_crop
from tests.conftest import make_photo


def test_every_input_kind_gives_the_same_pixels(tmp_path):
    path = make_photo(tmp_path / "a.png", 1)
    data = path.read_bytes()
    expected = np.asarray(load_image(path)[0])
    for source in (str(path), data, io.BytesIO(data), Image.open(path), expected, expected / 255.0):
        image, _ = load_image(source)
        assert image.mode == "RGB"
        np.testing.assert_allclose(np.asarray(image, dtype=float), expected, atol=1)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    exif[0x0132] = "2021:05:04 03:02:01"
    image.save(tmp_path / "r.jpg", exif=exif)
    loaded, info = load_image(tmp_path / "r.jpg")
    assert loaded.size == (20, 40)
    assert (info.width, info.height) == (20, 40)
    assert info.taken_at is not None and info.taken_at.year == 2021


def test_a_large_jpeg_decodes_reduced_keeping_its_own_size_and_orientation(tmp_path):
    photo = Image.open(make_photo(tmp_path / "p.png", 3, size=(2000, 1500)))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 1500 wide, 2000 high
    photo.save(tmp_path / "big.jpg", quality=92, exif=exif)
    photo.save(tmp_path / "big.png")
    full, full_info = load_image(tmp_path / "big.jpg")
    reduced, info = load_image(tmp_path / "big.jpg", min_side=384)
    assert full.size == (1500, 2000) and reduced.size == (750, 1000)  # 1/2: 1/4 would leave 375 < 384
    assert (info.width, info.height) == (full_info.width, full_info.height) == (1500, 2000)  # the file's own size
    assert load_image(tmp_path / "big.jpg", min_side=190)[0].size == (375, 500)  # 1/8 would leave 188 < 190
    assert load_image(tmp_path / "big.jpg", min_side=180)[0].size == (188, 250)  # 1/8
    assert load_image(tmp_path / "big.jpg", min_side=800)[0].size == (1500, 2000)  # no reduction keeps 800
    assert load_image(tmp_path / "big.png", min_side=384)[0].size == (2000, 1500)  # only JPEGs decode reduced
    # What the embedder sees hardly changes: the resize reduces to within 3x the crop anyway.
    a, b = (np.asarray(crop_for_embedding(image, 128), dtype=np.float32) for image in (full, reduced))
    assert np.abs(a - b).mean() < 1.0


def test_grey_palette_and_alpha_become_rgb(tmp_path):
    Image.new("L", (16, 16), 80).save(tmp_path / "g.png")
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_image(tmp_path / "g.png")[0].mode == "RGB"
    assert load_image(tmp_path / "t.png")[0].getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_a_deep_grayscale_photo_reads_as_its_8_bit_copy(tmp_path, fmt):
    # A dark 16-bit scan (brightest sample at 30% of the range) must not be stretched to full
    # brightness by its own maximum, which put it away from the same photo saved in 8 bits.
    gray = np.asarray(Image.open(make_photo(tmp_path / "p.png", 5)).convert("L"), np.float64) * 0.3
    eight_bit = np.asarray(load_image(Image.fromarray(gray.round().astype(np.uint8)))[0], np.float64)
    deep = {
        "16-bit": Image.fromarray((gray * 257).round().astype(np.uint16)),
        "32-bit integer, 16-bit values": Image.fromarray((gray * 257).round().astype(np.int32)),
        "float 0-1": Image.fromarray((gray / 255).astype(np.float32)),
    }
    for kind, image in deep.items():
        if fmt == "png" and image.mode in ("I", "F"):
            continue  # PNG holds 16-bit integers, not 32-bit or floats
        image.save(tmp_path / f"deep.{fmt}")
        loaded, _ = load_image(tmp_path / f"deep.{fmt}")
        assert loaded.mode == "RGB", kind
        assert np.abs(np.asarray(loaded, np.float64) - eight_bit).max() <= 1, kind
        assert np.asarray(loaded).max() < 0.35 * 255, kind  # as dark as it was


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ("blue", "green")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r, g, b = load_image(tmp_path / "a.gif")[0].getpixel((0, 0))
    assert b > 200 and g < 50


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("zero.jpg", b"", "empty"),
        ("text.jpg", b"this is not an image at all", "not an image"),
        ("trunc.jpg", None, "truncated"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:
        good = make_photo(tmp_path / "good.jpg", 2, size=(300, 200)).read_bytes()
        content = good[: len(good) // 2]
    path.write_bytes(content)
    with pytest.raises(InvalidImageError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InvalidImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InvalidImageError):
        load_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path):
    side = int(MAX_PIXELS**0.5) + 100
    Image.new("1", (side, side)).save(tmp_path / "bomb.png", optimize=True)
    with pytest.raises(InvalidImageError, match="too large|bomb"):
        load_image(tmp_path / "bomb.png")


def test_a_panorama_too_large_in_full_is_read_where_it_decodes_reduced(tmp_path, monkeypatch):
    import indexer.images

    monkeypatch.setattr(indexer.images, "MAX_PIXELS", 1_000_000)  # stands in for 64 MP: a 100 MP test photo is slow to make
    photo = Image.open(make_photo(tmp_path / "p.png", 5, size=(2000, 1500)))
    photo.save(tmp_path / "pano.jpg", quality=90)
    photo.save(tmp_path / "pano.mpo", "MPO", save_all=True, append_images=[photo])  # a camera's JPEG with a second frame
    with pytest.raises(InvalidImageError, match=r"too large: 2000x1500 pixels \(limit"):
        load_image(tmp_path / "pano.jpg")  # decoded in full it would be 3 MP
    for name in ("pano.jpg", "pano.mpo"):
        image, info = load_image(tmp_path / name, min_side=384)  # decoded at 1/2: 0.75 MP
        assert image.size == (1000, 750) and (info.width, info.height) == (2000, 1500)
    photo.save(tmp_path / "pano.png")
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(tmp_path / "pano.png", min_side=384)  # no reduced decode for PNG


def test_square_crop_and_prepare(tmp_path):
    path = make_photo(tmp_path / "w.png", 3, size=(200, 100))
    assert square_crop(load_image(path)[0], 64).size == (64, 64)
    x = prepare(path, 64)
    assert x.shape == (3, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_heic_via_pillow_heif(tmp_path):
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "phone.heic", format="HEIF")
    image, info = load_image(tmp_path / "phone.heic")
    assert image.size == (64, 48) and info.format == "HEIF"
    r, g, b = image.getpixel((5, 5))
    assert r > 180 and g < 60 and b < 60


def test_a_heic_decodes_from_its_embedded_thumbnail_when_that_is_large_enough(tmp_path):
    photo = Image.open(make_photo(tmp_path / "p.png", 4, size=(160, 120))).resize((1600, 1200))
    photo.save(tmp_path / "phone.heic", format="HEIF", quality=80, thumbnails=[320], enc_params={"preset": "ultrafast"})
    full, info = load_image(tmp_path / "phone.heic")
    assert full.size == (1600, 1200)
    small, info = load_image(tmp_path / "phone.heic", thumbnail_side=192)  # an iPhone's 320 x 240 qualifies
    assert small.size == (320, 240) and (info.width, info.height, info.format) == (1600, 1200, "HEIF")
    assert np.abs(np.asarray(small.resize((160, 120)), float) - np.asarray(full.resize((160, 120)), float)).mean() < 8
    assert load_image(tmp_path / "phone.heic", thumbnail_side=300)[0].size == (1600, 1200)  # too small: in full
    assert load_image(tmp_path / "phone.heic", min_side=192)[0].size == (1600, 1200)  # the JPEG setting alone: in full
    photo.save(tmp_path / "two.heic", format="HEIF", quality=80, thumbnails=[320, 512], enc_params={"preset": "ultrafast"})
    assert load_image(tmp_path / "two.heic", 384, 192)[0].size == (512, 384)  # the one as large as a JPEG decodes
    assert load_image(tmp_path / "two.heic", 400, 192)[0].size == (320, 240)  # else the smaller one
    wide = photo.resize((1600, 1066))  # its 320 x 212 thumbnail is 1.509:1, the photo 1.501:1
    wide.save(tmp_path / "wide.heic", format="HEIF", quality=80, thumbnails=[320], enc_params={"preset": "ultrafast"})
    assert load_image(tmp_path / "wide.heic", 384, 192)[0].size == (318, 212)  # resampled to the photo's aspect
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: an iPhone held upright
    exif.get_ifd(0x8769)[0x9003] = "2020:01:02 03:04:05"  # DateTimeOriginal
    photo.save(tmp_path / "upright.heic", format="HEIF", quality=80, exif=exif.tobytes(), thumbnails=[320], enc_params={"preset": "ultrafast"})
    upright, info = load_image(tmp_path / "upright.heic", 384, 192)
    assert upright.size == (240, 320) and (info.width, info.height) == (1200, 1600)  # turned as the photo is
    turned = load_image(tmp_path / "upright.heic")[0].resize((120, 160))
    assert np.abs(np.asarray(upright.resize((120, 160)), float) - np.asarray(turned, float)).mean() < 8  # the same way
    assert info.taken_at is not None and info.taken_at.year == 2020
    Image.open(tmp_path / "p.png").save(tmp_path / "p.jpg", quality=90)
    assert load_image(tmp_path / "p.jpg", thumbnail_side=64)[0].size == (160, 120)  # a JPEG has no such thumbnail


def test_flat_borders_are_trimmed_and_photos_are_left_alone():
    from indexer.images import trim_border

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    framed = Image.new("RGB", (160, 150), (20, 200, 90))
    framed.paste(Image.new("RGB", (160, 20), (235, 55, 165)), (0, 0))  # a viewer's title bar
    framed.paste(photo, (20, 40))
    trimmed = trim_border(framed)
    assert abs(trimmed.size[0] - 120) <= 2 and abs(trimmed.size[1] - 90) <= 2
    assert trim_border(photo).size == photo.size  # no flat band: untouched
    flat = Image.new("RGB", (64, 64), (9, 9, 9))
    assert trim_border(flat).size == (64, 64)  # flat all over: nothing sensible to keep, so keep all


def test_a_frame_around_a_photo_with_flat_margins_trims_to_what_the_photo_trims_to():
    """A white-background product shot in a screenshot's frame: the frame's rows span the photo's
    white margin and the frame's sides, so one trim stops at the photo; trimming again goes on."""
    from indexer.images import crop_for_embedding, trim_border, trim_borders
    from indexer.training.views import border

    rng = np.random.default_rng(0)
    shot = Image.new("RGB", (240, 160), (255, 255, 255))
    shot.paste(Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8)), (70, 50))  # the object
    framed = border(shot, np.random.default_rng(3))
    assert trim_border(shot).size == (100, 60)  # the original trims to its object at once
    assert trim_border(framed).size[1] >= 150  # the framed copy, trimmed once: the frame goes, the margin stays
    assert trim_borders(shot).size == (100, 60)
    assert all(abs(a - b) <= 2 for a, b in zip(trim_borders(framed).size, (100, 60)))  # (a 256 px copy finds the bands)
    assert trim_borders(framed, passes=1).size == trim_border(framed).size  # what indexes built before this did
    a, b = (np.asarray(crop_for_embedding(x, 64), dtype=np.float32) for x in (framed, shot))
    assert np.abs(a - b).mean() < 2  # the same pixels go to the encoder
    untrimmed = np.asarray(crop_for_embedding(framed, 64, trim=0), dtype=np.float32)
    assert np.abs(untrimmed - b).mean() > 20  # (without trimming they differ)


def test_frame_crop_keeps_the_frame_around_the_centre_square():
    from indexer.images import FRAME_STEP, crop_for_embedding, frame_crop

    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))  # 3:2 landscape
    frame = frame_crop(photo, 128, 2.0)
    assert frame.size == (192, 128)  # all of it
    assert frame_crop(photo.transpose(Image.Transpose.TRANSPOSE), 128, 2.0).size == (128, 192)  # portrait
    assert frame_crop(photo.resize((900, 200)), 128, 2.0).size == (256, 128)  # a panorama keeps its middle 2:1
    assert frame_crop(photo, 128, 1.25).size == (160, 128)  # the default's cap
    assert frame_crop(photo.resize((210, 200)), 128, 2.0).size == (128, 128)  # nearly square: a square
    odd = frame_crop(photo.resize((251, 200)), 128, 2.0)  # long side 161 px: cut to the step below
    assert odd.size == (128 + FRAME_STEP * 2, 128)
    # Its centre square is the square crop, to within a pixel of alignment; aspect 1 is the square.
    w = frame.size[0]
    centre = np.asarray(frame.crop(((w - 128) // 2, 0, (w + 128) // 2, 128)), dtype=np.float32)
    square = np.asarray(square_crop(photo, 128), dtype=np.float32)
    assert np.abs(centre - square).mean() < 1.0
    assert np.array_equal(np.asarray(crop_for_embedding(photo, 128, frame_aspect=1.0)), np.asarray(square_crop(photo, 128)))
    assert tuple(prepare(photo, 128, frame_aspect=1.25).shape) == (3, 128, 160)
