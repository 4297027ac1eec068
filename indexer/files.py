"""Finding photos on disk: a recursive walk that skips hidden files and never loops on symlinks."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class PhotoFile:
    """A candidate photo as the walk saw it (size and mtime decide whether it changed)."""

    path: Path
    size: int
    mtime: float


def is_photo_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_photos(roots: Iterable[Path], follow_symlinks: bool = False) -> Iterator[PhotoFile]:
    """Every photo under `roots` (files or folders), absolute paths, sorted within each folder.

    Hidden files and folders (names starting with '.') are skipped. Symlinked folders and files
    are followed only with `follow_symlinks`, and a folder reached twice (a link loop, or two
    links to one place) is walked once.
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[Path] = set()
    for root in roots:
        root = Path(root).expanduser().absolute()
        if root.is_file():
            entry = _photo_file(root, follow_symlinks=True)
            if entry and entry.path not in seen_files:
                seen_files.add(entry.path)
                yield entry
            continue
        if not root.is_dir():
            log.warning("%s: not a file or folder, skipped", root)
            continue
        yield from _walk_dir(root, follow_symlinks, seen_dirs, seen_files)


def _walk_dir(
    root: Path, follow: bool, seen_dirs: set[tuple[int, int]], seen_files: set[Path]
) -> Iterator[PhotoFile]:
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            stat = folder.stat()
            key = (stat.st_dev, stat.st_ino)
            if key in seen_dirs:
                log.info("%s: already walked (symlink loop or duplicate link), skipped", folder)
                continue
            seen_dirs.add(key)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("%s: cannot read folder (%s), skipped", folder, exc.strerror or exc)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink() and not follow:
                    continue
                if entry.is_dir(follow_symlinks=follow):
                    subfolders.append(Path(entry.path))
                elif is_photo_name(entry.name):
                    photo = _photo_file(Path(entry.path), follow)
                    if photo and photo.path not in seen_files:
                        seen_files.add(photo.path)
                        yield photo
            except OSError as exc:
                log.warning("%s: cannot stat (%s), skipped", entry.path, exc.strerror or exc)
        stack.extend(reversed(subfolders))


def _photo_file(path: Path, follow_symlinks: bool) -> PhotoFile | None:
    if not is_photo_name(path.name):
        return None
    try:
        stat = path.stat() if follow_symlinks else path.lstat()
    except OSError:
        return None
    return PhotoFile(path=path, size=stat.st_size, mtime=stat.st_mtime)


def content_hash(path: Path) -> str:
    """BLAKE2b-128 of the file's bytes: recognises a moved or renamed photo without re-embedding it."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
