"""Finding photos on disk: a recursive walk that skips hidden files, never loops on symlinks, opens
only regular files, and reports every root and folder it could not read (so nothing under them is
mistaken for deleted)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from indexer.images import IMAGE_EXTENSIONS, PHOTO_NAMES, open_regular

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20

# Folders that hold copies or system files, never a user's photos (matched against folder and file
# names, as fnmatch patterns): a Synology NAS keeps every photo's thumbnails in @eaDir beside it and
# deleted files in #recycle; Windows keeps deleted files in $RECYCLE.BIN. Indexed, each photo would
# come back with its NAS thumbnails as near-duplicates.
DEFAULT_EXCLUDES = ("@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information", "lost+found", "node_modules")


@dataclass(frozen=True)
class PhotoFile:
    """A candidate photo as the walk saw it (size and mtime decide whether it changed)."""

    path: Path
    size: int
    mtime: float


@dataclass
class Scan:
    """What one walk over some roots found, and what it could not look at.

    A photo may only be treated as deleted when its root was listed and no folder above it was
    unreadable: `was_read(path)` says so.
    """

    files: list[PhotoFile] = field(default_factory=list)
    listed_roots: list[Path] = field(default_factory=list)
    missing_roots: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # folders (or roots) and why
    rejected: list[tuple[PhotoFile, str]] = field(default_factory=list)  # photo-named non-photos
    symlinks_skipped: int = 0
    excluded: list[Path] = field(default_factory=list)  # folders and photo files an exclude pattern matched

    def was_read(self, path: str | Path) -> bool:
        """True when `path` lies under a listed root and under no folder that could not be read."""
        path = str(path)
        if not any(is_inside(path, str(root)) for root in self.listed_roots):
            return False
        return not any(is_inside(path, str(folder)) for folder, _ in self.unreadable)

    @property
    def seen(self) -> set[str]:
        return {str(f.path) for f in self.files} | {str(f.path) for f, _ in self.rejected}


def is_inside(path: str, folder: str) -> bool:
    """`path` is `folder` or lies below it (plain string paths, compared as given)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def is_photo_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_photos(roots: Iterable[Path], follow_symlinks: bool = False, exclude: Sequence[str] = DEFAULT_EXCLUDES) -> Scan:
    """Every photo under `roots` (files or folders), absolute paths, sorted within each folder.

    Hidden files and folders (names starting with '.') are skipped, and so are folders and files
    whose name matches a pattern of `exclude` (fnmatch, case-sensitive; a root is never excluded:
    it was asked for): they count as read, so photos indexed under them before leave the index.
    Symlinked folders and files are followed only with `follow_symlinks`, and a folder reached
    twice (a link loop, or two links to one place) is walked once. FIFOs, sockets, devices and broken links that carry a
    photo's name are reported in `rejected`; they are never opened.
    """
    scan = Scan()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[Path] = set()
    for root in roots:
        root = Path(root).expanduser().absolute()
        try:
            info = root.stat()
        except OSError as exc:
            reason = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot read: {exc.strerror or exc}"
            log.warning("%s: %s; the photos indexed under it are kept", root, reason)
            scan.missing_roots.append(root)
            scan.unreadable.append((root, reason))
            continue
        scan.listed_roots.append(root)
        if stat.S_ISDIR(info.st_mode):
            _walk_dir(root, follow_symlinks, seen_dirs, seen_files, scan, tuple(exclude))
        elif root not in seen_files:
            seen_files.add(root)
            _add_entry(root, info, scan, explicit=True)
    return scan


def walk_photos(roots: Iterable[Path], follow_symlinks: bool = False, exclude: Sequence[str] = DEFAULT_EXCLUDES) -> Iterator[PhotoFile]:
    """The photos of `scan_photos` (for callers that only read: training, evaluation)."""
    yield from scan_photos(roots, follow_symlinks, exclude).files


def _walk_dir(
    root: Path, follow: bool, seen_dirs: set[tuple[int, int]], seen_files: set[Path], scan: Scan, exclude: tuple[str, ...]
) -> None:
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
            key = (info.st_dev, info.st_ino)
            if key in seen_dirs:
                log.info("%s: already walked (symlink loop or duplicate link), skipped", folder)
                continue
            seen_dirs.add(key)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            reason = f"cannot read folder: {exc.strerror or exc}"
            log.warning("%s: %s; the photos indexed under it are kept", folder, reason)
            scan.unreadable.append((folder, reason))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if any(fnmatchcase(entry.name, pattern) for pattern in exclude):
                if is_photo_name(entry.name) or entry.is_dir(follow_symlinks=False):
                    log.debug("%s: excluded by a pattern", path)
                    scan.excluded.append(path)
                continue
            try:
                if entry.is_symlink():
                    if not os.path.exists(path):
                        if is_photo_name(entry.name):
                            _reject(path, entry.stat(follow_symlinks=False), "broken symbolic link", scan)
                        continue
                    if not follow:
                        scan.symlinks_skipped += is_photo_name(entry.name) or entry.is_dir()
                        continue
                if entry.is_dir(follow_symlinks=follow):
                    subfolders.append(path)
                elif is_photo_name(entry.name) and path not in seen_files:
                    seen_files.add(path)
                    _add_entry(path, entry.stat(follow_symlinks=follow), scan)
            except OSError as exc:
                if is_photo_name(entry.name):
                    scan.rejected.append((PhotoFile(path, 0, 0.0), f"cannot stat: {exc.strerror or exc}"))
        stack.extend(reversed(subfolders))


def _add_entry(path: Path, info: os.stat_result, scan: Scan, explicit: bool = False) -> None:
    if not is_photo_name(path.name) and not explicit:
        return
    if not stat.S_ISREG(info.st_mode):
        _reject(path, info, f"not a regular file ({_kind(info.st_mode)})", scan)
        return
    if not is_photo_name(path.name):
        log.warning("%s: not a photo file name (%s), skipped", path, PHOTO_NAMES)
        return
    scan.files.append(PhotoFile(path=path, size=info.st_size, mtime=info.st_mtime))


def _reject(path: Path, info: os.stat_result, reason: str, scan: Scan) -> None:
    log.warning("%s: %s, skipped", path, reason)
    scan.rejected.append((PhotoFile(path=path, size=info.st_size, mtime=info.st_mtime), reason))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a link")):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def content_hash(path: Path) -> str:
    """BLAKE2b-128 of the file's bytes: recognises a moved or renamed photo without re-embedding it.

    Opens regular files only (a FIFO would block forever) and reads no more than stat said.
    """
    digest = hashlib.blake2b(digest_size=16)
    with open_regular(path) as fh:
        remaining = os.fstat(fh.fileno()).st_size
        while remaining > 0 and (chunk := fh.read(min(HASH_CHUNK, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()
