r"""Committing a checkpoint directory: a finished temporary directory takes the place of
the target, atomically where the system can swap two directories; the leftovers of
interrupted saves are removed and a moved-aside old checkpoint is restored, while no
other save runs in the folder. For every layout that is a directory.

.. code-block:: text

    <folder>/.inox_io-tmp-<name>.<pid>.<token>/   a save in progress (or a killed one's)
    <folder>/.inox_io-old-<name>.<pid>.<token>/   the old checkpoint, moved aside while
                                                  the new one takes its place (no swap)
    <folder>/<name>/                              the checkpoint

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with guarded(folder / 'ckpt'):
    ...     temp = folder / temporary_name('ckpt')
    ...     temp.mkdir()
    ...     commit(temp, folder / 'ckpt', overwrite=False)
    >>> sorted(p.name for p in folder.iterdir())
    ['ckpt']
"""

from __future__ import annotations

__all__ = ["ASIDE_PREFIX", "commit", "exchange", "guarded", "recover"]

import contextlib
import ctypes
import errno
import os
import secrets
import shutil

from pathlib import Path
from typing import Iterator, List

from ..atomic import fsync_directory, save_guard, temporaries_of, temporary_name, temporary_stem

#: The name of an old checkpoint moved aside during a replacement (where the system
#: cannot swap directories): not a temporary, for until the new one is in place it may
#: be the only checkpoint there.
ASIDE_PREFIX = ".inox_io-old-"


def exchange(a: Path, b: Path) -> bool:
    r"""Swaps two paths atomically; returns whether the system could."""

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def aside_path(path: Path) -> Path:
    return path.with_name(f"{ASIDE_PREFIX}{temporary_stem(path.name)}.{os.getpid()}.{secrets.token_hex(4)}")


def asides(path: Path) -> List[Path]:
    r"""The old checkpoints of :py:`path` moved aside, oldest first."""

    prefix = f"{ASIDE_PREFIX}{temporary_stem(path.name)}."
    try:
        names = [name for name in os.listdir(path.parent) if name.startswith(prefix)]
    except OSError:
        return []
    found = [path.parent / name for name in names]
    return sorted(found, key=lambda p: p.lstat().st_mtime_ns if p.exists() else 0)


def commit(temp: Path, path: Path, overwrite: bool, *, swap=exchange) -> None:
    r"""Moves the finished directory :py:`temp` to :py:`path`.

    Replacing a checkpoint swaps both directories atomically where the system can
    (``renameat2(RENAME_EXCHANGE)``, :py:`swap`); elsewhere (NFS), the old one is moved
    aside first, under :data:`ASIDE_PREFIX`, so that for a moment neither sits at
    :py:`path`: a crash then leaves the old one aside, which :func:`recover` (the next
    save's) puts back.
    """

    if overwrite and os.path.lexists(path) and swap(temp, path):
        shutil.rmtree(temp, ignore_errors=True)  # temp now holds the old checkpoint
    elif overwrite and os.path.lexists(path):
        old = aside_path(path)
        os.rename(path, old)
        fsync_directory(path.parent)  # the old one durable aside before the new one comes
        os.rename(temp, path)
        fsync_directory(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            # Fails on a non-empty directory: a checkpoint appearing meanwhile is not lost.
            os.rename(temp, path)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
            raise
    fsync_directory(path.parent)


def recover(path: Path) -> List[Path]:
    r"""After a crash between the two renames of :func:`commit`: puts the old checkpoint
    back at :py:`path` if nothing is there, and removes those that a finished commit
    superseded. Only while no save runs in the folder (:func:`guarded`). Returns what
    it restored or removed."""

    done = []
    found = asides(path)
    if found and not os.path.lexists(path):
        os.rename(found.pop(), path)  # the newest: the checkpoint of the last commit begun
        fsync_directory(path.parent)
        done.append(path)
    for old in found:
        shutil.rmtree(old, ignore_errors=True)
        done.append(old)
    return done


def remove_leftovers(path: Path) -> None:
    r"""Removes the temporaries of earlier saves of :py:`path`, first putting back a
    moved-aside old checkpoint (:func:`recover`)."""

    recover(path)
    for name in temporaries_of(path.parent, path.name):
        leftover = path.parent / name
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def guarded(path: Path) -> Iterator[None]:
    r"""Held by a save of the directory :py:`path` from before its temporary exists
    until it is committed or removed: leftovers of interrupted saves of :py:`path` are
    removed first, if no save runs in the folder (:func:`inox_io.atomic.save_guard`)."""

    with save_guard(path.parent, lambda: remove_leftovers(path)):
        yield

