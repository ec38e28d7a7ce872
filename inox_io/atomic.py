r"""Atomic, durable file writing.

A file is written under a temporary name beside its target, flushed and fsynced, then
committed by a rename (or a hard link, when the target must not be overwritten), then
the directory is fsynced. A crash at any moment leaves the old file or the new one
under the target name, never a partial one. Temporary names start with
:data:`TEMP_PREFIX` and are never mistaken for checkpoints.

Every system call of a save goes through this module, which is where the reliability
tests inject faults.
"""

from __future__ import annotations

__all__ = ["TEMP_PREFIX", "AtomicFile", "fsync_directory", "is_temporary", "remove_temporaries"]

import os
import secrets
import shutil

from pathlib import Path

TEMP_PREFIX = ".inox_io-tmp-"


def is_temporary(path: str | os.PathLike) -> bool:
    r"""Whether a path is a temporary left by an unfinished save."""

    return Path(path).name.startswith(TEMP_PREFIX)


def temporary_path(target: Path) -> Path:
    return target.with_name(f"{TEMP_PREFIX}{target.name}.{os.getpid()}.{secrets.token_hex(4)}")


def remove_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    r"""Removes the temporaries of unfinished saves in a directory (of the target
    :py:`name` only, if given) and returns them."""

    removed = []
    prefix = TEMP_PREFIX + (f"{name}." if name else "")
    for entry in Path(directory).iterdir() if Path(directory).is_dir() else []:
        if entry.name.startswith(prefix):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def fsync_directory(path: str | os.PathLike) -> None:
    r"""Makes the entries of a directory (a rename, a new file) durable."""

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data) -> None:
    r"""Writes a whole buffer, looping over short writes."""

    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class AtomicFile:
    r"""Context manager writing a file atomically.

    On a clean exit the file is fsynced and committed; on an exception the temporary is
    removed and the target is untouched.

    Arguments:
        target: The final path.
        overwrite: Whether an existing target may be replaced.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / 'hello.txt'
        >>> with AtomicFile(path) as f:
        ...     write_all(f.fd, b'hello')
        >>> path.read_bytes()
        b'hello'
        >>> with AtomicFile(path) as f:
        ...     pass
        Traceback (most recent call last):
          ...
        FileExistsError: ...hello.txt already exists; pass overwrite=True to replace it
    """

    def __init__(self, target: str | os.PathLike, *, overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite
        self.temp = temporary_path(self.target)
        self.fd = -1

    def __enter__(self) -> AtomicFile:
        if not self.overwrite and self.target.exists():
            raise FileExistsError(f"{self.target} already exists; pass overwrite=True to replace it")
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        committed = False
        try:
            if kind is None:
                os.fsync(self.fd)
            fd, self.fd = self.fd, -1
            os.close(fd)
            if kind is None:
                self.commit()
                committed = True
        finally:
            if self.fd >= 0:
                try:
                    os.close(self.fd)
                except OSError:
                    pass
            if not committed:
                self.temp.unlink(missing_ok=True)

    def commit(self) -> None:
        if self.overwrite:
            os.replace(self.temp, self.target)
        else:
            # A hard link fails if the target appeared meanwhile: no check-then-act race.
            try:
                os.link(self.temp, self.target)
            except FileExistsError:
                raise FileExistsError(f"{self.target} already exists; pass overwrite=True to replace it") from None
            os.unlink(self.temp)
        fsync_directory(self.target.parent)
