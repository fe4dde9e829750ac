"""An exclusive lock on a file, between processes and threads: ``flock(2)`` on a descriptor of
its own, so the kernel lets it go when the process ends, even by SIGKILL.

The filelock package does the same on Linux; importing it cost 10-17 ms here (filelock 4.3: 21
modules of its own, with decimal and hmac), paid by every run that attaches to a reused stack (the
slot's lock, then the reuse record's). The package runs on Linux only (``flock`` is
POSIX); filelock's own Unix lock is this same call, so the two keep each other out of a file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

#: How often a lock that is held elsewhere is tried again.
POLL = 0.05


class LockTimeout(OSError):
    """The lock was not free within the timeout."""


class FileLock:
    """``path`` locked while held; ``timeout`` seconds to wait (0: once; None: for ever)."""

    def __init__(self, path: str | Path, timeout: float | None = None):
        self.path = str(path)
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        """Take the lock, or :class:`LockTimeout` (after closing what it opened)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(errno.EAGAIN, "held by another process", self.path) from None
                time.sleep(POLL)
                continue
            self._fd = fd
            return self

    def release(self) -> None:
        """Let the lock go (nothing when not held)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
