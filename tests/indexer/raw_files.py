"""Camera RAW files made in the tests: DNGs laid out as cameras and Adobe's converter write them.

`dng` makes one from a photo: the photo's sRGB pixels back to linear light, sampled through an RGGB
colour filter into 12-bit sensor values (what a sensor records of the scene the photo shows), with
a colour matrix that makes the camera's colours sRGB's, a tiny first image (IFD 0, as in every
DNG) and, in a sub-IFD beside the sensor data, a JPEG preview as a camera renders one.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

WHITE = 4095  # a 12-bit sensor
# sRGB's linear primaries in CIE XYZ (D65); a DNG's colour matrix maps XYZ to the camera's colours.
SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
BYTE, ASCII, SHORT, LONG, SRATIONAL = 1, 2, 3, 4, 10
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, SRATIONAL: 8}
_PACK = {BYTE: "B", ASCII: "B", SHORT: "H", LONG: "I", SRATIONAL: "i"}


def mosaic(photo: Image.Image) -> np.ndarray:
    """The 12-bit RGGB sensor values of a scene that looks like `photo` (even-sized)."""
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float64) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    h, w = linear.shape[0] // 2 * 2, linear.shape[1] // 2 * 2
    linear = linear[:h, :w]
    cfa = np.empty((h, w))
    cfa[0::2, 0::2] = linear[0::2, 0::2, 0]
    cfa[0::2, 1::2] = linear[0::2, 1::2, 1]
    cfa[1::2, 0::2] = linear[1::2, 0::2, 1]
    cfa[1::2, 1::2] = linear[1::2, 1::2, 2]
    return np.round(cfa * WHITE).astype("<u2")


def jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


def dng(
    photo: Image.Image,
    preview: bytes | None = None,
    orientation: int = 1,
    taken: str | None = "2024:05:06 07:08:09",
) -> bytes:
    """A DNG of the scene `photo` shows, with `preview` (JPEG bytes) as its large preview, the TIFF
    `orientation` (1 upright, 6: turn 90 degrees clockwise to show, ...), and the time it was taken."""
    sensor = mosaic(photo)
    h, w = sensor.shape
    thumb = np.asarray(photo.convert("RGB").resize((16, 12)), dtype=np.uint8)
    colour_matrix = np.linalg.inv(SRGB_TO_XYZ)
    ifd0 = [
        (254, LONG, [1]),  # a reduced-size image
        (256, LONG, [16]), (257, LONG, [12]), (258, SHORT, [8, 8, 8]), (259, SHORT, [1]), (262, SHORT, [2]),
        (271, ASCII, b"diffsearch\0"), (272, ASCII, b"test sensor\0"), (274, SHORT, [orientation]),
        (273, LONG, thumb.tobytes()), (277, SHORT, [3]), (278, LONG, [12]), (279, LONG, [thumb.nbytes]),
        (50706, BYTE, [1, 4, 0, 0]), (50708, ASCII, b"diffsearch test sensor\0"),
        (50721, SRATIONAL, [v for x in colour_matrix.ravel() for v in (round(x * 10000), 10000)]),
        (50778, SHORT, [21]),  # D65
        (50728, SRATIONAL, [1, 1, 1, 1, 1, 1]),  # as-shot neutral: white is white
    ]  # fmt: skip
    if taken:
        ifd0.append((306, ASCII, taken.encode() + b"\0"))
    raw = [
        (254, LONG, [0]), (256, LONG, [w]), (257, LONG, [h]), (258, SHORT, [16]), (259, SHORT, [1]),
        (262, SHORT, [32803]), (273, LONG, sensor.tobytes()), (277, SHORT, [1]), (278, LONG, [h]),
        (279, LONG, [sensor.nbytes]), (33421, SHORT, [2, 2]), (33422, BYTE, [0, 1, 1, 2]),
        (50714, SHORT, [0]), (50717, LONG, [WHITE]),
    ]  # fmt: skip
    subs = [raw]
    if preview is not None:
        pw, ph = Image.open(io.BytesIO(preview)).size
        subs.append([
            (254, LONG, [1]), (256, LONG, [pw]), (257, LONG, [ph]), (258, SHORT, [8, 8, 8]), (259, SHORT, [7]),
            (262, SHORT, [6]), (273, LONG, preview), (277, SHORT, [3]), (278, LONG, [ph]), (279, LONG, [len(preview)]),
        ])  # fmt: skip
    return _tiff(ifd0, subs)


def _tiff(ifd0: list, subs: list[list]) -> bytes:
    """A little-endian TIFF laid out as a camera writes one: header, IFD 0 (with `subs` as its
    sub-IFDs, tag 330), the sub-IFDs, then the data they point to. An entry's value is a list of
    numbers, or bytes: a string's (ASCII) or, for tag 273, the strip the entry points to."""
    tables = [sorted(ifd0 + [(330, LONG, [0] * len(subs))], key=lambda e: e[0])]
    tables += [sorted(sub, key=lambda e: e[0]) for sub in subs]
    starts, end = [], 8
    for table in tables:
        starts.append(end)
        end += 2 + 12 * len(table) + 4
    tables[0] = [(tag, kind, starts[1:] if tag == 330 else value) for tag, kind, value in tables[0]]
    data = bytearray()

    def put(blob: bytes) -> int:
        data.extend(b"\0" * ((end + len(data)) % 2))  # word-aligned, as TIFF asks
        data.extend(blob)
        return end + len(data) - len(blob)

    out = bytearray(b"II*\0" + struct.pack("<I", 8))
    for table in tables:
        out += struct.pack("<H", len(table))
        for tag, kind, value in table:
            if tag == 273:  # the strip: the entry points to it
                value = [put(value)]
            packed = value if isinstance(value, bytes) else struct.pack(f"<{len(value)}{_PACK[kind]}", *value)
            field = packed.ljust(4, b"\0") if len(packed) <= 4 else struct.pack("<I", put(packed))
            out += struct.pack("<HHI", tag, kind, len(packed) // _SIZES[kind]) + field
        out += b"\0\0\0\0"
    return bytes(out + data)
