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
    >>> from inox_io.atomic import temporary_name
    >>> folder = Path(tempfile.mkdtemp())
    >>> with guarded(folder / 'ckpt'):
    ...     temp = folder / temporary_name('ckpt')
    ...     temp.mkdir()
    ...     commit(temp, folder / 'ckpt', overwrite=False)
    >>> sorted(p.name for p in folder.iterdir())
    ['ckpt']
"""

from __future__ import annotations

__all__ = [
    "ASIDE_PREFIX", "MANIFEST", "check_target", "commit", "disk_bytes", "exchange", "guarded", "recover",
    "reporting_growth", "save_directory",
]  # fmt: skip

import contextlib
import ctypes
import errno
import jax
import os
import secrets
import shutil
import stat
import threading

from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence, TypeVar

from .. import distributed
from ..atomic import (
    TEMP_PREFIX, DurableFile, fsync_directory, save_error, save_guard, temporaries_of, temporary_path, temporary_stem, write_all,
)  # fmt: skip

#: The file of a checkpoint directory that describes it, written last.
MANIFEST = "manifest.json"

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
        in_place_durably(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            # Fails on a non-empty directory: a checkpoint appearing meanwhile is not lost.
            os.rename(temp, path)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
            raise
    in_place_durably(path)


def in_place_durably(path: Path) -> None:
    r"""Makes the rename that put the new checkpoint at :py:`path` durable; a failure
    says that the checkpoint is in place all the same."""

    try:
        fsync_directory(path.parent)
    except OSError as e:
        raise save_error(e, path, committed=True) from e


def said_of_target(error: BaseException | None, path: Path) -> BaseException | None:
    r"""A failed save's error as reported: a storage error (:class:`OSError` with an
    errno) of any file of the save names the user's :py:`path`, not a temporary, and
    says what the path holds (:func:`inox_io.atomic.save_error`); other errors are
    returned as they are."""

    if isinstance(error, OSError) and not isinstance(error, FileExistsError) and error.errno is not None:
        return save_error(error, path)
    return error


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

    with save_guard(path.parent, lambda: remove_leftovers(path), target=path):
        yield



def check_target(path: Path, overwrite: bool) -> None:
    r"""Refuses targets that cannot or must not be replaced."""

    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory")
    if not os.path.lexists(path) or (path.is_dir() and not any(path.iterdir())):
        return  # an empty directory holds nothing to lose (e.g. from tempfile.mkdtemp)
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not (path / MANIFEST).is_file():
        # overwrite=True must never wipe a directory that is not a checkpoint
        raise FileExistsError(
            f"{path} exists and is not an inox_io checkpoint directory; refusing to replace it"
        )


def disk_bytes(path: str | os.PathLike) -> int:
    r"""The size of the regular file at :py:`path`, or of those under the directory at
    :py:`path` (links not followed; files that vanish meanwhile do not count).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / 'sub').mkdir()
        >>> _ = (folder / 'a').write_bytes(b'abc'), (folder / 'sub' / 'b').write_bytes(b'de')
        >>> disk_bytes(folder), disk_bytes(folder / 'a'), disk_bytes(folder / 'missing')
        (5, 3, 0)
    """

    def size(name: str) -> int:
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    if not os.path.isdir(path) or os.path.islink(path):
        return size(os.fspath(path))
    return sum(size(os.path.join(folder, name)) for folder, _, names in os.walk(path) for name in names)


@contextlib.contextmanager
def reporting_growth(folder: Path, progress: Callable[[int], None] | None, limit: int, interval: float = 0.1) -> Iterator[None]:
    r"""While the block runs, calls :py:`progress` every :py:`interval` seconds, from a
    thread, with the most bytes seen in the files under :py:`folder` (at most
    :py:`limit`): the progress of a writer that reports none (orbax's). Data the writer compresses is
    counted as it lies on disk, so the count may stay below :py:`limit`.

    Example:
        >>> import tempfile, time
        >>> folder, seen = Path(tempfile.mkdtemp()), []
        >>> with reporting_growth(folder, seen.append, limit=4, interval=0.01):
        ...     _ = (folder / 'data').write_bytes(b'123456')
        ...     while not seen or seen[-1] < 4:
        ...         time.sleep(0.01)
        >>> seen[-1]
        4
    """

    if progress is None:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        high = 0  # the writer's temporary files come and go: the count never goes back
        while not stop.wait(interval):
            try:
                high = max(high, min(disk_bytes(folder), limit))
                progress(high)
            except Exception:
                return  # a failing bar must not fail the save

    thread = threading.Thread(target=watch, name="inox_io-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def shared_temporary_path(path: Path) -> Path:
    r"""A temporary name beside :py:`path`, the same on every process."""

    if jax.process_count() == 1:
        return temporary_path(path)
    pid, token = distributed.broadcast("temporary", [os.getpid(), secrets.token_hex(4)])
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{pid}.{token}")


Prepared = TypeVar("Prepared")
Part = TypeVar("Part")


def save_directory(
    path: Path,
    overwrite: bool,
    *,
    prepare: Callable[[], Prepared],
    write: Callable[[Path, Prepared], Part],
    manifest: Callable[[Sequence[Part]], str],
    failure: Callable[[BaseException, Path], BaseException] = said_of_target,
    result: Callable[[], Any] = lambda: None,
) -> Any:
    r"""Saves the checkpoint directory :py:`path` from every process of the job, and
    returns process 0's :py:`result()` (JSON) after the commit, on every process.

    Each step ends with an agreement of all processes (:func:`inox_io.distributed.agree`),
    so that a failure anywhere (a full disk, a bad array, Ctrl-C) fails the save on every
    process, removes its temporary and leaves the old checkpoint as it was:

    1. every process checks the target; process 0 takes the folder's save lock
       (:func:`guarded`) and creates the temporary directory, named alike everywhere;
       every process runs :py:`prepare` (what it can refuse before writing);
    2. every process runs :py:`write` into the temporary, returning its part of the
       manifest, and makes its files durable;
    3. process 0 writes :py:`manifest` (the text, given every process's part) as
       :data:`MANIFEST`, last, and commits the directory.

    Inside :func:`inox_io.distributed.own_folders` (each process saving into a staging
    folder of its own), every process makes its own temporary in step 1 and commits
    it in step 3, process 0's alone with the manifest: each folder then holds that
    process's files, which the caller gathers (uploads) afterwards.

    :py:`failure` turns an error into the one reported (a storage error naming the
    user's path rather than a temporary).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> save_directory(folder / 'ckpt', False, prepare=lambda: b'bytes',
        ...     write=lambda temp, data: (temp / 'data').write_bytes(data),
        ...     manifest=lambda parts: '{"sizes": %s}' % list(parts))
        >>> (folder / 'ckpt' / MANIFEST).read_text()
        '{"sizes": [5]}'
    """

    def agree(error: BaseException | None, value: Any = None) -> List[Any]:
        return distributed.agree(path, None if error is None else failure(error, path), value)

    check_target(path, overwrite)  # on every process, before any collective: all fail alike
    primary = distributed.is_primary()
    # In folders of their own (staging for an object store), every process makes its
    # temporary and puts it in place; process 0's alone gets the manifest.
    mine = primary or distributed.in_own_folders()
    temp = shared_temporary_path(path)
    error: BaseException | None = None
    prepared: Any = None
    part: Any = None
    outcome: Any = None
    with contextlib.ExitStack() as held:
        try:
            try:
                if mine:
                    held.enter_context(guarded(path))  # from before the temporary exists
                    temp.mkdir()
                prepared = prepare()
            except BaseException as e:  # Ctrl-C too: the temporary must go
                error = e
            agree(error)  # also the barrier: nobody writes before the directory exists
            try:
                part = write(temp, prepared)
            except BaseException as e:
                error = e
            parts = agree(error, part)  # every process's files are durable (or none commits)
            if primary:
                with DurableFile(temp / MANIFEST) as f:
                    write_all(f.fd, manifest(parts).encode())
            if mine:
                fsync_directory(temp)
                commit(temp, path, overwrite)
            if primary:
                outcome = result()
        except BaseException as e:
            error = e
        finally:
            if mine and temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
    return agree(error, outcome if primary and error is None else None)[0]
