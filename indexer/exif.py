"""What a photo's EXIF says that diffsearch reads: when it was taken, which way up it is."""

from __future__ import annotations

from datetime import datetime

from PIL import ExifTags, Image


def taken_at(image: Image.Image) -> datetime | None:
    """DateTimeOriginal (when the shutter fired), else DateTime; None where neither reads."""
    try:
        exif = image.getexif()
        value = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)
        return datetime.strptime(str(value).strip("\x00 "), "%Y:%m:%d %H:%M:%S") if value else None
    except (ValueError, KeyError, TypeError, OSError):
        return None


def orientation(image: Image.Image) -> int:
    """The EXIF Orientation (1-8): 1 upright, also where the photo has none or it cannot be read."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (ValueError, TypeError, OSError):
        return 1
