"""Colour: how a decoded image becomes 8-bit sRGB, the colours the model was trained on and the
colours a browser assumes of the server's untagged thumbnails.

A photo names its colour space with an embedded ICC profile or, in a HEIF or an AVIF without one,
with code points (CICP, the "nclx" colour box; ITU-T H.273) for its primaries and tone curve.
Transparency and grayscale deeper than 8 bits are brought to 8-bit RGB the way a viewer shows them.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageCms

from indexer.bundled import COLOUR_PROFILES

log = logging.getLogger(__name__)

SRGB_PROFILE = ImageCms.createProfile("sRGB")
# Image modes LittleCMS converts with a profile of their own colour space (RGB, gray, CMYK);
# deeper grays are made 8-bit gray first, other modes (alpha, palette) RGB.
PROFILED_MODES = ("RGB", "L", "CMYK")
# Grayscale modes of more than 8 bits a sample, which Pillow's own convert clips at 255.
DEEP_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I", "F")

# CICP colour primaries that are converted, with the bundled profile (data/colour-profiles) for
# each: 12 is Display P3, what a phone or an encoder writes for a wide-gamut still. 1 (BT.709,
# sRGB's own) and 2 (unspecified) need nothing. Others are left as read: BT.2020 (9) comes with an
# HDR tone curve in practice, which needs tone mapping rather than a profile.
CICP_PROFILES = {12: "DisplayP3-v4.icc"}
# CICP transfer characteristics of stills read with the sRGB tone curve, which the profiles above
# carry: sRGB (13), unspecified (2: sRGB by MIAF's default) and the BT.709 family (1, 6, 14, 15),
# read as sRGB as it always has been with sRGB's primaries. Linear, PQ or HLG photos keep their
# colours as read.
SDR_TRANSFERS = frozenset({1, 2, 6, 13, 14, 15})
# How much of an AVIF is read for its colour box: the boxes that describe it come first.
AVIF_HEAD_BYTES = 1 << 20


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas composited on white (how a viewer shows them)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in DEEP_GRAY_MODES:
        image = to_8bit_gray(image)
    return image.convert("RGB")


def to_8bit_gray(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or floating-point grayscale image as 8-bit ("L"), read as a viewer reads it:
    16-bit samples over their full range (0-65535, what a browser shows of a 16-bit PNG), floats
    over 0-1. A 32-bit integer image (mode "I": a TIFF, or a 16-bit file in older Pillows) gets the
    range of the smallest depth that holds its largest value, 8 or 16 bits, or failing both its
    largest value. Scaling by the image's own maximum instead stretched a dark photo to full
    brightness, away from its 8-bit copy."""
    array = np.asarray(image, dtype=np.float64)
    peak = float(array.max()) if array.size else 0.0
    if image.mode.startswith("I;16"):
        full = 65535.0
    elif image.mode == "F":
        full = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else peak
    else:
        full = 255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak
    return Image.fromarray(np.clip(np.round(array * (255.0 / full)), 0, 255).astype(np.uint8), "L")


def convert_to_srgb(image: Image.Image, icc: bytes, min_side: int = 0) -> Image.Image:
    """`image`, whose pixels are in the colour space the ICC profile `icc` describes, in sRGB.

    An iPhone's Display P3, a camera's Adobe RGB or a Lightroom export's ProPhoto photo, read as if
    it were sRGB (what the model was trained on, and what a browser assumes of the server's
    untagged JPEG thumbnails), looks duller than it is, and its vector sits away from an sRGB copy
    of it: median 0.059 (P3), 0.090 (Adobe RGB), 0.188 (ProPhoto) on 121 Caltech test photos,
    against 0.031, 0.038 and 0.059 converted (JPEG q95; bench/colour_profiles.py).
    A profile that is sRGB already, or that LittleCMS cannot use (corrupt, or of another colour
    space than the pixels), leaves the image as it is. LittleCMS takes ~33 ms a megapixel, so
    with `min_side` an image whose shorter side is at least twice it is first reduced by the
    largest whole factor (at most 8) that keeps it at least `min_side`, as a JPEG's reduced decode."""
    if image.mode in DEEP_GRAY_MODES:
        image = to_8bit_gray(image)  # keeps a gray profile usable
    if image.mode not in PROFILED_MODES:
        image = to_rgb(image)
    transform = _srgb_transform(icc, image.mode)
    if transform is None:
        return image
    factor = min(8, min(image.size) // min_side) if min_side else 1
    return transform.apply(image.reduce(factor) if factor >= 2 else image)


@functools.lru_cache(maxsize=32)
def _srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The conversion from `icc` to sRGB for `mode` images; None where none is needed or possible.
    A photo library holds a handful of distinct profiles, so each is built (~5 ms) once a process."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        # NOCACHE: without LittleCMS's one-pixel cache a transform is safe to share between threads.
        transform = ImageCms.buildTransform(profile, SRGB_PROFILE, mode, "RGB", flags=ImageCms.Flags.NOCACHE)
        if mode == "CMYK":
            return transform
        levels = np.linspace(0, 255, 16 if mode == "RGB" else 256).round().astype(np.uint8)
        probe = np.stack(np.meshgrid(levels, levels, levels), -1).reshape(64, 64, 3) if mode == "RGB" else levels[None]
        image = Image.fromarray(probe)  # "RGB" or "L", from the array's shape
        moved = np.abs(np.asarray(transform.apply(image), np.int16) - np.asarray(image.convert("RGB"), np.int16))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        log.debug("colour profile not used (%s): pixels read as sRGB", exc)
        return None
    return transform if moved.max() > 1 else None  # within a level everywhere: sRGB already


def colour_profile(image: Image.Image) -> bytes | None:
    """The ICC profile of the colour space `image`'s pixels are in: its own (an embedded profile
    takes precedence, as in every viewer; a plugin's value that is not bytes counts as none), else
    the one its code points name (`cicp_profile`), else None. Called on an image not yet loaded."""
    icc = image.info.get("icc_profile")
    return bytes(icc) if isinstance(icc, (bytes, bytearray)) and icc else cicp_profile(image)


def cicp_profile(image: Image.Image) -> bytes | None:
    """The ICC profile (bundled) for the colour space a HEIF's or an AVIF's code points name, where
    that is a wide gamut `CICP_PROFILES` converts; None for anything else. Called on an image
    not yet loaded (an AVIF's colour box is read from its file)."""
    codes = _cicp(image)
    if codes is None:
        return None
    primaries, transfer = codes
    name = CICP_PROFILES.get(primaries)
    if name is None or transfer not in SDR_TRANSFERS:
        if primaries not in (1, 2):
            log.debug("colour code points %s/%s not converted: pixels read as sRGB", primaries, transfer)
        return None
    return _bundled_profile(name)


@functools.lru_cache(maxsize=len(CICP_PROFILES))
def _bundled_profile(name: str) -> bytes:
    return (COLOUR_PROFILES / name).read_bytes()


def _cicp(image: Image.Image) -> tuple[int, int] | None:
    """(colour primaries, transfer characteristics) of a HEIF (pillow-heif reads them) or an AVIF."""
    nclx = image.info.get("nclx_profile")
    if isinstance(nclx, dict):
        return nclx.get("color_primaries"), nclx.get("transfer_characteristics")
    if image.format != "AVIF":
        return None
    try:  # Pillow's AVIF plugin reads no colour box: read it from the start of the file
        position = image.fp.tell()
        image.fp.seek(0)
        head = image.fp.read(AVIF_HEAD_BYTES)
        image.fp.seek(position)
    except (AttributeError, OSError, ValueError):  # a caller's image, loaded and closed
        return None
    return avif_cicp(head)


def avif_cicp(data: bytes) -> tuple[int, int] | None:
    """(colour primaries, transfer characteristics) of the first "nclx" colour box among an AVIF's
    item properties (meta > iprp > ipco > colr; ISO/IEC 14496-12 boxes, ISO/IEC 23008-12 items),
    or None where it has none. `data` may stop short of the file's end."""
    for start, end in _find(data, (b"meta", b"iprp", b"ipco", b"colr"), 0, len(data)):
        if end - start >= 10 and data[start : start + 4] == b"nclx":
            primaries, transfer = struct.unpack_from(">HH", data, start + 4)
            return primaries, transfer
    return None


def _find(data: bytes, path: tuple[bytes, ...], start: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the content of every box at `path` (box types, outermost first) in data[start:end]."""
    for kind, content, stop in _boxes(data, start, end):
        if kind != path[0]:
            continue
        if kind == b"meta":
            content += 4  # a full box: its version and flags come first
        if len(path) == 1:
            yield content, stop
        else:
            yield from _find(data, path[1:], content, stop)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """The boxes in data[start:end], each as (type, start of its content, its end): a box is a
    32-bit size (1: a 64-bit size follows the type; 0: to the end), a four-letter type, content.
    A box cut off by the end of `data` ends there; a malformed size ends the walk."""
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1 and position + 16 <= end:
            (size,) = struct.unpack_from(">Q", data, position + 8)
            header = 16
        elif size == 0:
            size = end - position
        if size < header:
            return
        yield kind, position + header, min(position + size, end)
        position += size
