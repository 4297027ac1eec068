"""Camera RAW files (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2, ...), read through LibRaw (rawpy).

A RAW file holds the sensor's samples and, in nearly every camera's files, a JPEG preview the camera
rendered from them: what the photographer saw on its screen, and what its JPEG twin shows. That
preview is read where it is large enough for what is asked (its shorter side at least `min_side`;
with no size asked, at least half the sensor's, what a half-size demosaic gives), turned the way
the RAW says. Otherwise the sensor's samples are demosaiced at half size (each 2x2 cell of the
colour filter one pixel: fast, and far more than a 128 px model needs) with the camera's white
balance and colour matrix, into sRGB with its tone curve and LibRaw's automatic brightness.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import Image

from indexer.exif import orientation as exif_orientation
from indexer.exif import taken_at as exif_taken_at

log = logging.getLogger(__name__)

# What LibRaw reads, by extension in any case: Adobe's DNG (and phones' ProRAW / Android RAW),
# Canon, Nikon, Sony, Fujifilm, Olympus / OM, Panasonic, Pentax, Samsung, Sigma, Hasselblad, Phase
# One, Leica, Epson, Minolta, Kodak, Mamiya, Leaf.
RAW_EXTENSIONS = frozenset(
    {
        ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
        ".rw2", ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".fff", ".iiq", ".erf", ".mrw", ".kdc",
        ".dcr", ".mos", ".mef",
    }
)  # fmt: skip

# What the index records as a camera RAW file's format (`ImageInfo.format`, the rows' `format`).
RAW_FORMAT = "RAW"
# LibRaw's orientation codes (its `flip`) as the turn that shows the photo upright.
_TURNS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}
# TIFF tags that mark a TIFF-shaped file as a camera RAW rather than a plain TIFF (`looks_raw`).
_DNG_VERSION, _SUB_IFDS, _NEW_SUBFILE_TYPE, _COMPRESSION, _PHOTOMETRIC = 50706, 330, 254, 259, 262
_RAW_PHOTOMETRICS = (32803, 34892)  # colour filter array, linear raw
_OLD_JPEG = 6  # a CR2's first image


class NotRawError(ValueError):
    """LibRaw does not recognise the data as a camera RAW file (or rawpy is not installed)."""


@dataclass(frozen=True)
class RawPhoto:
    """What `read_raw` read: `image` (a preview, not yet decoded where it is a JPEG, or the sensor's
    demosaiced pixels, as 8-bit RGB), the turn it still needs to stand upright (`turn`: None when it
    is upright or carries its own EXIF orientation), the sensor image's size as shown upright, and
    when it was taken (the preview's EXIF, else the RAW's own where Pillow or, having demosaiced,
    LibRaw reads it; None where neither says)."""

    image: Image.Image
    turn: Image.Transpose | None
    width: int
    height: int
    taken_at: datetime | None


def looks_raw(image: Image.Image) -> bool:
    """Is this file, which Pillow opened as a TIFF, a camera RAW (a DNG, NEF, CR2, ARW, PEF, ...)?
    Pillow shows such a file's first image: a small preview, or nothing it can decode."""
    if image.format != "TIFF":
        return False
    tags = getattr(image, "tag_v2", {})
    return (
        _DNG_VERSION in tags
        or _SUB_IFDS in tags
        or tags.get(_PHOTOMETRIC) in _RAW_PHOTOMETRICS
        or (tags.get(_NEW_SUBFILE_TYPE) == 1 and 271 in tags)  # a camera's reduced-size first image
        or (tags.get(_COMPRESSION) == _OLD_JPEG and 271 in tags)
    )


def read_raw(data: bytes, min_side: int = 0) -> RawPhoto:
    """The camera RAW file `data` as a photo (see the module's docstring for which pixels).

    Raises NotRawError where LibRaw cannot open it (not a RAW, or its header cut off), ValueError
    where it opens but cannot be read (cut short, corrupt)."""
    try:
        rawpy = _rawpy()
    except ImportError:  # pragma: no cover - rawpy is a declared dependency
        raise NotRawError("reading camera RAW files needs rawpy (pip install rawpy)") from None
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except (rawpy.LibRawError, rawpy.NotSupportedError) as exc:  # not recognised, or not even its header
        raise NotRawError(f"not a camera RAW file LibRaw reads ({_reason(exc)})") from None
    try:
        with raw:
            sizes = raw.sizes
            width, height = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
            need = min_side or min(width, height) // 2
            preview = _preview(raw, need)
            if preview is not None:
                turn = None if exif_orientation(preview) != 1 else _TURNS.get(sizes.flip)
                return RawPhoto(preview, turn, width, height, exif_taken_at(preview) or _shell_time(data))
            pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, gamma=(2.4, 12.92))
            when = _shell_time(data) or _libraw_time(raw)  # LibRaw's, once its unpack is done anyway
    except (rawpy.LibRawError, rawpy.NotSupportedError) as exc:
        raise ValueError(f"unreadable camera RAW file: {_reason(exc)}") from None
    return RawPhoto(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), None, width, height, when)


def _reason(exc: Exception) -> str:
    """LibRaw's message (rawpy passes it as bytes)."""
    reason = exc.args[0] if exc.args else type(exc).__name__
    return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)


@functools.cache
def _rawpy():  # noqa: ANN202 - the module
    """rawpy, imported with LibRaw's OpenMP (its own copy of libgomp) at one thread.

    An OpenMP thread pool does not survive fork: a decode worker forked from a process that had
    demosaiced a RAW hung in its own first demosaic (seen in the tests' process; a server that had
    searched a RAW upload, then indexed, would too). libgomp reads OMP_NUM_THREADS once, as it
    loads with rawpy (a rawpy imported before this, by other code, keeps its threads). Indexing
    decodes one photo per worker process anyway."""
    if "rawpy" in sys.modules:
        return sys.modules["rawpy"]
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import rawpy
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    return rawpy


def _preview(raw: object, need: int) -> Image.Image | None:
    """The RAW's largest embedded preview, where its shorter side is at least `need` pixels."""
    rawpy = _rawpy()
    try:
        thumb = raw.extract_thumb()  # type: ignore[attr-defined]
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    except rawpy.LibRawError as exc:  # a broken preview: the sensor's samples may still read
        log.debug("RAW preview unreadable (%s); demosaicing instead", exc)
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            image = Image.open(io.BytesIO(thumb.data))
        elif thumb.format == rawpy.ThumbFormat.BITMAP and thumb.data.ndim == 3 and thumb.data.shape[2] == 3:
            image = Image.fromarray(np.ascontiguousarray(thumb.data, dtype=np.uint8), "RGB")
        else:
            return None
    except (OSError, ValueError, SyntaxError):
        return None
    return image if min(image.size) >= need else None


def _shell_time(data: bytes) -> datetime | None:
    """When a TIFF-shaped RAW (DNG, NEF, CR2, ARW, PEF, ...) says it was taken, read by Pillow from
    its first IFD and EXIF: LibRaw has it too, but rawpy unpacks the whole sensor to give it."""
    try:
        with Image.open(io.BytesIO(data)) as shell:
            return exif_taken_at(shell)
    except (OSError, ValueError, SyntaxError):
        return None


def _libraw_time(raw: object) -> datetime | None:
    """When the photo was taken, as LibRaw read it (None: not recorded, or an older rawpy)."""
    try:
        stamp = raw.other.timestamp  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError, OverflowError):
        return None
    return stamp.replace(tzinfo=None) if isinstance(stamp, datetime) and stamp.year > 1970 else None
