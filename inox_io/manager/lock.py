r"""The lock that lets one writing :class:`~inox_io.CheckpointManager` at a time use a
directory: an exclusive :func:`fcntl.flock` on :data:`LOCK_FILE`, which also names
its holder for the error a second writer gets.

Example:
    >>> import tempfile
    >>> directory = Path(tempfile.mkdtemp())
    >>> lock = DirectoryLock(directory)
    >>> DirectoryLock(directory)
    Traceback (most recent call last):
      ...
    inox_io.manager.lock.DirectoryLockedError: ...: another CheckpointManager writes here (pid ...); ...
    >>> lock.release()
    >>> DirectoryLock(directory).release()
"""

from __future__ import annotations

__all__ = ["LOCK_FILE", "DirectoryLock", "DirectoryLockedError"]

import os
import socket
import warnings

from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, see DirectoryLock
    fcntl = None

LOCK_FILE = ".inox_io-lock"  #: In the checkpoint directory, locked by the writer.


class DirectoryLockedError(RuntimeError):
    r"""Another :class:`~inox_io.CheckpointManager` writes to this directory."""


class DirectoryLock:
    r"""Holds the writer's lock of :py:`directory` from creation to :meth:`release`.

    The lock is advisory and local: it does not protect directories on network file
    systems without flock support, and does not exist where :mod:`fcntl` does not
    (a warning says so).

    Raises:
        DirectoryLockedError: if another writer, in this process or another, holds it.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.fd = -1
        if fcntl is None:
            warnings.warn("fcntl is unavailable: this CheckpointManager cannot lock its directory", stacklevel=3)
            return
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryLockedError(
                f"{self.directory}: another CheckpointManager writes here ({holder}); "
                "close it first, or open this one with read_only=True"
            ) from None
        # The holder's identity, for the message above; the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        r"""Releases the lock (idempotent). The file stays, so that no two inodes race."""

        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
