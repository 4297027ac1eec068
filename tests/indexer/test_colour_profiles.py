"""Photos tagged with another colour space's ICC profile are read in sRGB (indexer.colour.convert_to_srgb).

The profiles are real ones (tests/indexer/icc, CC0): Display P3 as an iPhone tags its photos,
Adobe RGB as a camera's wide-gamut setting does. Each test photo is made here: sRGB pixels
converted into the profile's space by LittleCMS and saved with the profile, which is exactly what
such a camera or export writes for the same scene.
"""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from indexer.embedding.config import RuntimeOptions
from indexer.embedding.embedder import Embedder
from indexer.colour import avif_cicp
from indexer.images import load_image

ICC = Path(__file__).parent / "icc"
WIDE = ["DisplayP3-v4", "AdobeCompat-v4"]


def profile(name: str) -> bytes:
    return (ICC / f"{name}.icc").read_bytes()


def saturated(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Patches of strong and mid colours over a gray ramp: where colour spaces differ most."""
    w, h = size
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, 1, 3))
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 140, 0), (120, 40, 200), (30, 160, 170)]
    for i, colour in enumerate(colours):
        ramp[: h // 2, i * w // len(colours) : (i + 1) * w // len(colours)] = colour
    return Image.fromarray(ramp)


def in_space(image: Image.Image, name: str) -> Image.Image:
    """`image` (sRGB) with its pixels in the colour space of profile `name`, untagged."""
    converted = ImageCms.profileToProfile(image, ImageCms.createProfile("sRGB"), ImageCms.ImageCmsProfile(io.BytesIO(profile(name))), outputMode="RGB")
    converted.info.pop("icc_profile", None)  # LittleCMS tags it: a save would embed the profile
    return converted


def tagged(image: Image.Image, name: str, fmt: str = "PNG", **options) -> bytes:
    """`image` (sRGB) as a file in the colour space of profile `name`, tagged with it."""
    buffer = io.BytesIO()
    in_space(image, name).save(buffer, fmt, icc_profile=profile(name), **options)
    return buffer.getvalue()


def pixels(source, **options) -> np.ndarray:
    return np.asarray(load_image(source, **options)[0], dtype=np.int16)


@pytest.mark.parametrize("name", WIDE)
def test_a_wide_gamut_photo_reads_as_its_srgb_original(name):
    original = saturated()
    data = tagged(original, name)
    managed, raw = pixels(data), pixels(data, to_srgb=False)
    expected = np.asarray(original, dtype=np.int16)
    assert np.abs(managed - expected).max() <= 3  # a round trip through the profile's space, in 8 bits
    assert np.abs(raw - expected).mean() > 8  # read as sRGB, as before: visibly duller


@pytest.mark.parametrize("fmt,options", [("JPEG", {"quality": 95}), ("WEBP", {"quality": 95}), ("HEIF", {"quality": 90})])
def test_the_profile_is_honoured_in_every_format_photos_come_in(fmt, options):
    original = np.asarray(saturated((128, 96)), dtype=np.int16)
    data = tagged(saturated((128, 96)), "DisplayP3-v4", fmt, **options)
    managed, raw = np.abs(pixels(data) - original).mean(), np.abs(pixels(data, to_srgb=False) - original).mean()
    assert managed < 0.4 * raw, (fmt, managed, raw)


def test_an_srgb_profile_changes_nothing():
    original = saturated()
    plain = pixels(tagged(original, "sRGB-v4"))
    np.testing.assert_array_equal(plain, np.asarray(original, dtype=np.int16))
    own = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # what Pillow itself writes
    buffer = io.BytesIO()
    original.save(buffer, "PNG", icc_profile=own)
    np.testing.assert_array_equal(pixels(buffer.getvalue()), np.asarray(original, dtype=np.int16))


def test_gray_alpha_and_unusable_profiles_never_fail_a_photo():
    gray = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1)), "L")
    buffer = io.BytesIO()
    gray.save(buffer, "PNG", icc_profile=profile("sGrey-v4"))
    image, _ = load_image(buffer.getvalue())
    assert image.mode == "RGB" and np.abs(np.asarray(image, np.int16) - np.asarray(gray.convert("RGB"), np.int16)).max() <= 1

    # A P3 photo with transparency: composited on white, then converted (white stays white).
    rgba = saturated().convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(96) < 48, 255, 0).astype(np.uint8)[None].repeat(64, 0)))
    p3 = Image.open(io.BytesIO(tagged(saturated(), "DisplayP3-v4"))).convert("RGBA")
    p3.putalpha(rgba.getchannel("A"))
    buffer = io.BytesIO()
    p3.save(buffer, "PNG", icc_profile=profile("DisplayP3-v4"))
    image = pixels(buffer.getvalue())
    assert np.abs(image[:, :48] - np.asarray(saturated(), np.int16)[:, :48]).max() <= 3
    assert (image[:, 48:] >= 254).all()

    # Corrupt, truncated, or of another colour space than the pixels: read as sRGB, as before.
    original = saturated()
    for bad, image in [(b"not a profile", original), (profile("DisplayP3-v4")[:100], original), (profile("DisplayP3-v4"), gray)]:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", icc_profile=bad)
        np.testing.assert_array_equal(pixels(buffer.getvalue()), np.asarray(image.convert("RGB"), dtype=np.int16))
    odd = saturated()
    odd.info["icc_profile"] = ["not", "bytes"]  # a caller's image, or a plugin's odd value
    np.testing.assert_array_equal(pixels(odd), np.asarray(original, dtype=np.int16))


def test_a_large_tagged_photo_is_reduced_before_it_is_converted():
    """LittleCMS takes ~30 ms a megapixel: with a `min_side`, conversion runs on the photo reduced
    by the largest whole factor that keeps it (as a JPEG's reduced decode)."""
    original = saturated((1600, 1200))
    data = tagged(original, "DisplayP3-v4")
    image, info = load_image(data, min_side=384)
    expected = np.asarray(original.reduce(3), dtype=np.int16)  # 1200 // 384 = 3
    assert (info.width, info.height) == (1600, 1200) and image.size == (534, 400)
    assert np.abs(np.asarray(image, np.int16) - expected).mean() < 1
    assert load_image(data)[0].size == (1600, 1200)  # without min_side, in full


def test_a_p3_copy_embeds_next_to_its_srgb_original(embedder, sample_photos):
    """The model's view: converted, an iPhone-P3 copy of a photo sits nearer its sRGB original than
    read as sRGB (indexes built before this setting keep reading it so)."""
    photos = [Image.open(p).convert("RGB") for p in sample_photos[::8][:6]]
    originals = [np.asarray(p) for p in photos]
    copies = [tagged(p, "DisplayP3-v4", "JPEG", quality=95) for p in photos]
    as_before = Embedder(embedder.config.replace(to_srgb=False), RuntimeOptions(device="cpu"), model=embedder.model)
    managed = np.linalg.norm(embedder.embed(copies) - embedder.embed(originals), axis=1)
    raw = np.linalg.norm(as_before.embed(copies) - as_before.embed(originals), axis=1)
    assert managed.mean() < 0.7 * raw.mean(), (managed, raw)


def test_an_iphone_like_heic_decodes_from_its_thumbnail_in_srgb():
    """An iPhone tags its HEICs Display P3 and embeds a 320 x 240 thumbnail: the thumbnail (which
    pillow-heif uses only when its colour profile is the photo's) is converted like the photo."""
    original = saturated((800, 600))
    data = tagged(original, "DisplayP3-v4", "HEIF", quality=90, thumbnails=[320], enc_params={"preset": "ultrafast"})
    image, info = load_image(data, min_side=384, thumbnail_side=192)
    assert image.size == (320, 240) and (info.width, info.height) == (800, 600)
    expected = np.asarray(original.resize(image.size, Image.Resampling.BOX), dtype=np.int16)
    raw = np.asarray(load_image(data, min_side=384, thumbnail_side=192, to_srgb=False)[0], dtype=np.int16)
    assert np.abs(np.asarray(image, np.int16) - expected).mean() < 0.3 * np.abs(raw - expected).mean()


def nclx(primaries: int, transfer: int = 13) -> dict[str, int]:
    """Colour code points as pillow-heif writes them (matrix BT.601, full range)."""
    return {"color_primaries": primaries, "transfer_characteristics": transfer, "matrix_coefficients": 6, "full_range_flag": 1}


def coded_heif(image: Image.Image, primaries: int, transfer: int = 13) -> bytes:
    """A HEIF without an ICC profile whose colour box gives code points (nclx), as libheif writes."""
    buffer = io.BytesIO()
    image.save(buffer, "HEIF", quality=95, save_nclx_profile=True, nclx_profile=nclx(primaries, transfer))
    return buffer.getvalue()


def coded_avif(image: Image.Image, primaries: int, transfer: int = 13) -> bytes:
    """An AVIF without an ICC profile whose colour box gives these code points: Pillow writes
    1/13/6 (sRGB) into its nclx box; the two numbers are set in place, as an encoder sets them."""
    buffer = io.BytesIO()
    image.save(buffer, "AVIF", quality=95)
    data = bytearray(buffer.getvalue())
    box = data.index(b"colrnclx") + 8
    assert data[box : box + 4] in (b"\x00\x01\x00\x0d", b"\x00\x02\x00\x02")  # sRGB or unspecified
    data[box : box + 4] = primaries.to_bytes(2, "big") + transfer.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("coded", [coded_heif, coded_avif])
def test_a_photo_whose_colour_code_points_name_display_p3_reads_in_srgb(coded):
    """A HEIF or an AVIF may name its colour space by code points instead of a profile (an nclx
    colour box: primaries 12 is Display P3). Read as sRGB it was duller, as a P3 JPEG had been."""
    original = saturated((128, 96))
    expected = np.asarray(original, dtype=np.int16)
    data = coded(in_space(original, "DisplayP3-v4"), 12)
    managed, raw = np.abs(pixels(data) - expected).mean(), np.abs(pixels(data, to_srgb=False) - expected).mean()
    assert managed < 0.4 * raw and raw > 4, (managed, raw)
    # sRGB's own code points, and a wide gamut with an HDR tone curve (PQ), leave the pixels as read.
    for primaries, transfer in ((1, 13), (2, 2), (12, 16)):
        data = coded(in_space(original, "DisplayP3-v4"), primaries, transfer)
        assert np.array_equal(pixels(data), pixels(data, to_srgb=False)), (primaries, transfer)


def test_an_icc_profile_wins_over_code_points():
    original = saturated((128, 96))  # Adobe RGB pixels with their profile, and code points that say Display P3
    data = tagged(original, "AdobeCompat-v4", "HEIF", quality=95, nclx_profile=nclx(12))
    assert np.abs(pixels(data) - np.asarray(original, np.int16)).mean() < 2


def test_a_malformed_avif_colour_box_is_no_colour_space():
    assert avif_cicp(coded_avif(saturated(), 12)) == (12, 13)
    whole = coded_avif(saturated(), 12)
    for data in (b"", b"\x00" * 7, whole[:40], whole[: whole.index(b"colrnclx") + 9], b"\x00\x00\x00\x00meta" + b"\xff" * 20,
                 b"\x00\x00\x00\x01meta" + b"\x00" * 4, b"\x00\x00\x00\x04meta" * 3, bytes(range(256)) * 4):
        assert avif_cicp(data) is None, data[:24]
