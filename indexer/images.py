"""Reading images from anything a caller holds, with one clear error for anything unreadable."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import stat
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, NamedTuple, Union

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from indexer.colour import colour_profile, convert_to_srgb, to_rgb
from indexer.errors import InvalidImageError
from indexer.exif import orientation as exif_orientation
from indexer.exif import taken_at as exif_taken_at
from indexer.raw import RAW_EXTENSIONS, RAW_FORMAT, NotRawError, RawPhoto, looks_raw, read_raw

if TYPE_CHECKING:  # torch loads where tensors are made: `diffsearch --help`, `stats`, `check` need none
    import torch

log = logging.getLogger(__name__)

try:  # HEIC/HEIF support is optional at import time but installed by default.
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    log.debug("pillow-heif not installed: HEIC/HEIF files will be skipped")

ImageInput = Union[str, os.PathLike, bytes, IO[bytes], Image.Image, npt.NDArray]

# No photo is read past this many bytes (a 1 GiB "photo" is a mistake, not a photo).
MAX_FILE_BYTES = 512 * 2**20
# The most pixels decoded for one photo (load_image refuses more with its own error; Pillow's own
# decompression-bomb guard refuses files above ~179 megapixels outright).
MAX_PIXELS = 64_000_000
# .jfif: how browsers on Windows save many JPEGs; .hif: Canon's and Sony's HEIF; .avif: AV1 photos
# (Pillow's own plugin); camera RAW files (`indexer.raw`).
IMAGE_EXTENSIONS = (
    frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".hif", ".avif"})
    | RAW_EXTENSIONS
)
# The file names read, for messages.
PHOTO_NAMES = ", ".join(sorted(IMAGE_EXTENSIONS - RAW_EXTENSIONS)) + " and camera RAW files (.dng, .cr2, .cr3, .nef, .arw, ...)"


@dataclass(frozen=True)
class ImageInfo:
    """What the store keeps about a decoded image."""

    width: int
    height: int
    format: str
    taken_at: datetime | None


def _describe(source: ImageInput) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {tuple(source.shape)}>"
    return f"<{getattr(source, 'name', type(source).__name__)}>"


def _from_array(array: npt.NDArray) -> Image.Image:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and 0.0 <= array.min() and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return Image.fromarray(array)


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """`path` opened for reading, only if it is a regular file (a FIFO, socket or device would block
    or never end). Opened non-blocking, so even a FIFO that appeared since a stat cannot hang us."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket or device"
            raise NotARegularFileError(f"not a regular file: it is {kind}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class NotARegularFileError(OSError):
    """A path that is a FIFO, socket, device or folder where a file was expected."""


def _open(source: ImageInput, min_side: int = 0) -> Image.Image | RawPhoto:
    """The image `source` holds, opened (not yet decoded), or the camera RAW file it is (`read_raw`):
    by its name (`RAW_EXTENSIONS`), or by its content where Pillow does not know it or sees only a
    RAW's TIFF shell (`looks_raw`). A RAW by name that LibRaw does not know is tried by Pillow."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    data = _read(source)
    named_raw = isinstance(source, (str, os.PathLike)) and os.path.splitext(source)[1].lower() in RAW_EXTENSIONS
    if named_raw:
        try:
            return read_raw(data, min_side)
        except NotRawError as exc:
            why = exc  # a JPEG saved under a RAW's name still reads, below
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if named_raw:
            raise
        try:
            return read_raw(data, min_side)
        except NotRawError:
            raise UnidentifiedImageError from None
    if looks_raw(image):  # not Pillow's: it would read only a tiny preview, or nothing
        if named_raw:
            raise ValueError(f"unreadable camera RAW file: {why}")
        with contextlib.suppress(NotRawError):  # a plain TIFF with sub-images: Pillow's
            return read_raw(data, min_side)
    return image


def _read(source: str | os.PathLike | bytes | IO[bytes]) -> bytes:
    """All of `source`'s bytes: a regular file's, or a stream's, at most MAX_FILE_BYTES."""
    if isinstance(source, (str, os.PathLike)):
        with open_regular(source) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise ValueError("empty file (0 bytes)")
            if size > MAX_FILE_BYTES:
                raise ValueError(f"file too large: {size:,} bytes (limit {MAX_FILE_BYTES:,})")
            return fh.read(size)
    data = source if isinstance(source, bytes) else source.read(MAX_FILE_BYTES + 1)
    if not data:
        raise ValueError("empty input (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"input too large: over {MAX_FILE_BYTES:,} bytes")
    return data


def load_image(
    source: ImageInput, min_side: int = 0, thumbnail_side: int = 0, to_srgb: bool = True
) -> tuple[Image.Image, ImageInfo]:
    """Decode `source` into an RGB image with EXIF orientation applied.

    `min_side` > 0: a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4 or
    1/8) as long as its shorter side stays at least `min_side` (`reduced_decode`); a 12-megapixel
    photo then decodes in a fraction of the time and memory. `thumbnail_side` > 0: a HEIC/HEIF
    photo decodes from a thumbnail embedded in it that is a scaled copy of it (pillow-heif checks
    its aspect, rotation, crop and colour profile) with a shorter side of at least `min_side`, or
    failing that `thumbnail_side` (see `reduced_decode`), resampled to the photo's exact aspect
    (`match_aspect`); a phone's 12-megapixel HEIC then decodes and crops in ~40 ms instead of
    ~0.66 s (bench/decode.py --format heic). Other formats decode in full.
    `to_srgb`: a photo tagged with another colour space's ICC profile, or a HEIF or AVIF without
    one whose colour code points name Display P3 (`colour_profile`), is converted to sRGB
    (`convert_to_srgb`), reduced first where `min_side` allows.
    A camera RAW file (`indexer.raw.read_raw`) is read from its embedded preview where that has
    `min_side` (with 0: half the sensor's shorter side), else demosaiced at half size.
    The ImageInfo always has the file's own size (a RAW's: its sensor image's, upright).

    Raises InvalidImageError (naming the source and the reason) for anything that is not a
    readable image: missing, empty, truncated, corrupt, too large, wrong type.
    """
    name = _describe(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 megapixels and refuses above ~179; what is decoded is checked
            # below, against a lower limit: a panorama whose JPEG decodes reduced may pass it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = _open(source, min_side)
            raw = opened if isinstance(opened, RawPhoto) else None
            image = raw.image if raw else opened
            width, height = (raw.width, raw.height) if raw else image.size
            fmt = RAW_FORMAT if raw else image.format or "PIXELS"  # PIXELS: an array or image in memory
            taken_at = raw.taken_at if raw else exif_taken_at(image)
            icc = colour_profile(image) if to_srgb else None  # read before decoding: an AVIF's is in its file
            image.seek(0) if getattr(image, "n_frames", 1) > 1 else None  # first frame of GIF/TIFF/MPO
            if min_side or thumbnail_side:
                reduced_decode(image, min_side, thumbnail_side)  # the size is now what will be decoded
            if image.size[0] * image.size[1] > MAX_PIXELS:
                decoded = f", {image.size[0]}x{image.size[1]} decoded" if image.size != (width, height) else ""
                raise InvalidImageError(name, f"too large: {width}x{height} pixels{decoded} (limit {MAX_PIXELS:,})")
            image.load()
            if image.format == "HEIF" and image.size != (width, height):
                image = match_aspect(image, width, height)  # decoded from an embedded thumbnail
            if not raw and _swaps_sides(image):
                width, height = height, width
            image = ImageOps.exif_transpose(image) or image
            if raw and raw.turn is not None:
                image = image.transpose(raw.turn)
            if icc:
                image = convert_to_srgb(image, icc, min_side)
            if image.mode != "RGB":
                image = to_rgb(image)
    except InvalidImageError:
        raise
    except FileNotFoundError:
        raise InvalidImageError(name, "file not found") from None
    except PermissionError:
        raise InvalidImageError(name, "permission denied") from None
    except IsADirectoryError:
        raise InvalidImageError(name, "is a directory") from None
    except NotARegularFileError as exc:
        raise InvalidImageError(name, str(exc)) from None
    except UnidentifiedImageError:
        raise InvalidImageError(name, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(name, f"decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, TypeError) as exc:
        raise InvalidImageError(name, f"corrupt or truncated image: {exc}") from None
    return image, ImageInfo(width=width, height=height, format=fmt, taken_at=taken_at)


def reduced_decode(image: Image.Image, min_side: int, thumbnail_side: int = 0) -> None:
    """Have an image not yet loaded decode smaller where its format allows: a JPEG at the smallest
    of libjpeg's scales (1/2, 1/4, 1/8) that keeps its shorter side at least `min_side`; a HEIF from
    the smallest thumbnail embedded in it whose shorter side is at least `min_side`, else at least
    `thumbnail_side` (pillow-heif's `draft`: only a scaled copy of the photo qualifies; a version
    without it, or a file without such a thumbnail, decodes in full). Anything else is left as it is."""
    width, height = image.size
    if image.format in ("JPEG", "MPO") and min_side:  # MPO: a camera's JPEG with extra frames
        scale = min_side / max(1, min(width, height))
        if scale <= 0.5:
            image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    elif image.format == "HEIF" and thumbnail_side:
        for side in sorted({max(min_side, thumbnail_side), thumbnail_side}, reverse=True):
            scale = side / max(1, min(width, height))
            if scale < 1 and image.draft(None, (math.ceil(width * scale), math.ceil(height * scale))):
                return


def match_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` (a thumbnail of a `width` x `height` photo) resampled to the photo's aspect at its
    shorter side. A thumbnail's sides are rounded each on its own (512 x 340 for 4032 x 2688), so
    its resize to the model's side could come out a pixel wider than the photo's and its centre
    crop half a pixel off: on 24 phone-sized photos with filtered thumbnails that doubled how far
    vectors moved from a full decode's (median 0.071 against 0.033 matched)."""
    w, h = image.size
    scale = min(w, h) / min(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image if target == image.size else image.resize(target, Image.Resampling.BICUBIC)


def _swaps_sides(image: Image.Image) -> bool:
    """Will `ImageOps.exif_transpose` turn the image a quarter turn (EXIF orientations 5-8)?"""
    return exif_orientation(image) in (5, 6, 7, 8)


def trim_border(image: Image.Image, tolerance: float = 6.0, max_fraction: float = 0.35) -> Image.Image:
    """The image without flat bands at its edges: letterboxing, a screenshot's frame, a mat.

    A band is a run of edge rows (or columns) each of one colour (per-channel std below
    `tolerance` on a 0-255 scale, measured on a <= 256 px copy). At most `max_fraction` of each
    dimension goes per side; an image that is flat all over is returned as it is.
    """
    small = image.copy()
    small.thumbnail((256, 256))
    a = np.asarray(small, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    h, w = a.shape[:2]

    def run(flat: npt.NDArray[np.bool_], limit: int) -> int:
        n = 0
        while n < limit and flat[n]:
            n += 1
        return n

    rows = a.std(axis=1).max(axis=1) < tolerance
    if rows.all():
        return image
    top, bottom = run(rows, int(h * max_fraction)), run(rows[::-1], int(h * max_fraction))
    inner = a[top : h - bottom] if h - bottom > top else a
    cols = inner.std(axis=0).max(axis=1) < tolerance
    left, right = run(cols, int(w * max_fraction)), run(cols[::-1], int(w * max_fraction))
    if top + bottom + left + right == 0 or h - top - bottom < 8 or w - left - right < 8:
        return image
    sx, sy = image.size[0] / w, image.size[1] / h
    box = (int(np.ceil(left * sx)), int(np.ceil(top * sy)), int((w - right) * sx), int((h - bottom) * sy))
    return image.crop(box)


# At most this many trims in a row (`trim_borders`); each one shrinks the image, so it always ends.
MAX_TRIMS = 8


def trim_borders(image: Image.Image, passes: int = MAX_TRIMS) -> Image.Image:
    """`trim_border` again on what it leaves, while a trim removes something (at most `passes`).

    A frame around a photo whose own edges are flat (a white-background product shot with a
    screenshot's frame around it) trims in two steps: the frame's rows span the photo's flat margin
    and the frame's sides at once, so they stop at the photo; the photo's margin then trims as the
    original's does. Trimming once left such a copy 0.6-0.8 from its original (bench/searched.py,
    Caltech val). `passes` 1 is the single trim of indexes built before this."""
    for _ in range(passes):
        trimmed = trim_border(image)
        if trimmed.size == image.size:
            break
        image = trimmed
    return image


def crop_for_embedding(
    image: Image.Image, size: int, trim: int = MAX_TRIMS, mirror: bool = False, frame_aspect: float = 1.0
) -> Image.Image:
    """What every photo goes through before the encoder: flat borders trimmed, then the centre
    square, or with `frame_aspect` > 1 as much of the frame around it as that allows (`frame_crop`).

    `mirror`: of the photo's left-right mirror, mirrored first, as a mirrored copy would be cropped.
    (Flipping the cropped square is not the same: a centre crop of odd margin moves by a pixel,
    which moved a vector by 0.14.)"""
    image = ImageOps.mirror(image) if mirror else image
    image = trim_borders(image, trim)
    return frame_crop(image, size, frame_aspect) if frame_aspect > 1 else square_crop(image, size)


def square_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (antialiased) and take the centre square."""
    return _centre_crop(*_resize_short_side(image, size), size, size)


# A frame's longer side grows in steps of this many pixels (two latent cells at TAEF2's 1/8), so
# the centre square sits exactly in the middle of the frame's latent, and few distinct shapes
# share the encoder's batches.
FRAME_STEP = 16


def frame_crop(image: Image.Image, size: int, max_aspect: float) -> Image.Image:
    """The photo with its shorter side resized to `size`; the longer side is cut (centred) down to
    `size` plus a multiple of FRAME_STEP, at most `max_aspect` x `size` (a wider photo keeps its
    middle). Its centre `size` square is `square_crop`'s to within a pixel."""
    resized, width, height = _resize_short_side(image, size)
    limit = int(size * max_aspect)

    def cut(side: int) -> int:
        return size + (min(side, limit) - size) // FRAME_STEP * FRAME_STEP

    return _centre_crop(resized, width, height, cut(width), cut(height))


def _resize_short_side(image: Image.Image, size: int) -> tuple[Image.Image, int, int]:
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0), new_w, new_h


def _centre_crop(image: Image.Image, width: int, height: int, out_w: int, out_h: int) -> Image.Image:
    left, top = (width - out_w) // 2, (height - out_h) // 2
    return image.crop((left, top, left + out_w, top + out_h))


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images of one size -> float tensor (B, 3, H, W) in [0, 1]."""
    import torch

    batch = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)


class Decode(NamedTuple):
    """How `load_image` decodes a photo (its arguments after the source, in order): its shorter side
    at least `min_side` where the format decodes smaller (0: in full), from an embedded HEIF
    thumbnail of at least `thumbnail_side` (0: never), converted to sRGB or not."""

    min_side: int = 0
    thumbnail_side: int = 0
    to_srgb: bool = True


def prepare(
    source: ImageInput, size: int, trim: int = MAX_TRIMS, frame_aspect: float = 1.0, decode: Decode = Decode()
) -> torch.Tensor:
    """Load (`load_image`, as `decode` says), trim flat borders (at most `trim` times: `trim_borders`;
    0: not at all) and crop one image to a (3, size, size) tensor in [0, 1] (with `frame_aspect` > 1,
    (3, H, W): see `frame_crop`)."""
    image, _ = load_image(source, *decode)
    return to_tensor([crop_for_embedding(image, size, trim, frame_aspect=frame_aspect)])[0]


def prepare_with_mirror(
    source: ImageInput, size: int, trim: int = MAX_TRIMS, frame_aspect: float = 1.0, decode: Decode = Decode()
) -> list[torch.Tensor]:
    """The image and its left-right mirror, each exactly as `prepare` makes it, from one decode."""
    image, _ = load_image(source, *decode)
    return [to_tensor([crop_for_embedding(image, size, trim, mirror, frame_aspect)])[0] for mirror in (False, True)]
