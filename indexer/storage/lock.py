"""One writer per index: an advisory lock file that the OS releases when the holder dies (even by kill -9)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from indexer.errors import IndexLockedError

LOCK_FILE = "write.lock"


class WriteLock:
    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise IndexLockedError(
                f"{self.path.parent} is being written by process {holder}; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    @property
    def fileno(self) -> int | None:
        """The lock's descriptor: forked helpers (decode workers) close their copy, so that a killed
        writer's lock is free at once rather than when its last worker notices and exits."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()
