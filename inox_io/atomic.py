r"""Atomic, durable file writing.

A file is written under a temporary name beside its target, flushed and fsynced, then
committed by a rename (or a hard link, when the target must not be overwritten), then
the directory is fsynced. A crash at any moment leaves the old file or the new one
under the target name, never a partial one. Temporary names start with
:data:`TEMP_PREFIX` and are never mistaken for checkpoints; those of a killed save
are removed by the next save of the same target (:func:`remove_stale_temporaries`).

Every system call of a save goes through :data:`syscalls`, which is where the
reliability tests inject faults. A failed save raises an :class:`OSError` naming the
target and saying whether the old file is untouched (the failure came before the
commit) or the new one is in place (only the final directory fsync failed).
"""

from __future__ import annotations

__all__ = [
    "TEMP_PREFIX",
    "NAME_MAX",
    "AtomicFile",
    "DurableFile",
    "again_if_replaced",
    "open_regular",
    "read_regular",
    "save_error",
    "save_guard",
    "temporary_name",
    "fsync_directory",
    "is_temporary",
    "remove_temporaries",
    "remove_stale_temporaries",
    "syscalls",
    "writev_all",
]

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
import types

from pathlib import Path
from typing import Callable, Iterator, List, Tuple, TypeVar

from .errors import CheckpointError

T = TypeVar("T")

try:
    import fcntl
except ImportError:  # Windows: no locks, so no cleaning of other saves' leftovers
    fcntl = None

TEMP_PREFIX = ".inox_io-tmp-"


def _writeback_function():
    r"""Linux's ``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)``, which
    starts writing a range of a file to disk without waiting for it; or None elsewhere.

    A hint only: a save started writing its first chunks back while it writes the next
    ones finds little left to do at its fsync, which alone makes the file durable.
    """

    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    write = 2  # SYNC_FILE_RANGE_WRITE

    def writeback(fd: int, offset: int, nbytes: int) -> None:
        function(fd, offset, nbytes, write)  # a failure is fsync's to report

    return writeback


#: The system calls of a save. They are looked up here at each call, not bound to
#: :mod:`os`, so that tests can inject faults (a full disk, I/O errors) into every step
#: of a save without patching :mod:`os` for the whole process.
syscalls = types.SimpleNamespace(
    open=os.open,
    write=os.write,
    writev=getattr(os, "writev", None),  # None where there is none (Windows)
    pwrite=os.pwrite,
    fsync=os.fsync,
    close=os.close,
    replace=os.replace,
    link=os.link,
    unlink=os.unlink,
    flock=fcntl.flock if fcntl is not None else None,
    writeback=_writeback_function(),  # a hint; None where there is none
)

#: Names of the temporaries this process is writing right now (threads included), which
#: :func:`remove_stale_temporaries` must not touch although their pid is alive.
_ACTIVE: set[str] = set()


def is_temporary(path: str | os.PathLike) -> bool:
    r"""Whether a path is a temporary left by an unfinished save."""

    return Path(path).name.startswith(TEMP_PREFIX)


#: The longest file name most file systems take (ext4, xfs, btrfs, tmpfs: NAME_MAX).
NAME_MAX = 255
#: What a temporary's name adds to its target's: the prefix, ``.<pid>.<8 hex digits>``.
_TEMP_EXTRA = len(TEMP_PREFIX) + 1 + 10 + 1 + 8


def temporary_stem(name: str) -> str:
    r"""What stands for a target's name in its temporaries' names: the name itself, or,
    where the temporary's name would pass :data:`NAME_MAX` bytes, a digest of it, so
    that every name the file system takes can be saved.

    Example:
        >>> temporary_stem('model.safetensors')
        'model.safetensors'
        >>> len(temporary_stem('m' * 250))
        33
    """

    if len(os.fsencode(name)) + _TEMP_EXTRA <= NAME_MAX:
        return name
    return "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:32]


def temporary_name(target: str, pid: int | None = None) -> str:
    r"""A fresh temporary name for :py:`target` (a file name): ``.inox_io-tmp-`` + its
    :func:`temporary_stem` + ``.<pid>.<8 random hex digits>``."""

    return f"{TEMP_PREFIX}{temporary_stem(target)}.{os.getpid() if pid is None else pid}.{secrets.token_hex(4)}"


def temporary_path(target: Path) -> Path:
    return target.with_name(temporary_name(target.name))


def temporaries_of(folder: Path, target: str) -> List[str]:
    r"""The names in :py:`folder` that are temporaries of :py:`target` (made by
    :func:`temporary_name`), with the pid each names; not those of other targets, even
    where one's name starts with the other's (``ckpt`` and ``ckpt.safetensors``)."""

    prefix = f"{TEMP_PREFIX}{temporary_stem(target)}."
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [name for name in names if name.startswith(prefix) and _owner(name[len(prefix) :]) is not None]


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


def _owner(rest: str) -> int | None:
    r"""The pid in ``<pid>.<8 hex digits>``, the end of a temporary's name, else None."""

    pid, _, token = rest.partition(".")
    if not (pid.isdigit() and len(token) == 8 and all(c in "0123456789abcdef" for c in token)):
        return None
    return int(pid) if 0 < int(pid) < 2**31 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. EPERM: it exists, under another user
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    r"""Removes the temporary files that killed saves of :py:`target` left beside it,
    and returns them.

    A temporary is stale when the process named in it is dead, or is this process but
    no save of it is writing the temporary. Those of live processes are kept: they may
    be saving right now. (On a file system shared between machines, a pid says nothing
    about the other machines' processes; saving one path from several machines at once
    is not supported anyway.) Errors are ignored: cleaning is best effort and must not
    fail the save that does it.
    """

    target = Path(target)
    prefix = f"{TEMP_PREFIX}{temporary_stem(target.name)}."
    removed = []
    for name in temporaries_of(target.parent, target.name):
        pid = _owner(name[len(prefix) :])
        if name in _ACTIVE or (pid != os.getpid() and _alive(pid)):
            continue
        try:
            syscalls.unlink(target.parent / name)  # a directory (not ours) raises: kept
        except OSError:
            continue
        removed.append(target.parent / name)
    return removed


@contextlib.contextmanager
def save_guard(folder: str | os.PathLike, clean: Callable[[], None], *, target: str | os.PathLike) -> Iterator[None]:
    r"""Holds a shared lock (``flock``) on :py:`folder` while a save writes there, and
    first calls :py:`clean` if it can hold the lock alone: then no save of any process
    using this guard is running in the folder, so every leftover of an earlier save
    there (a temporary, an unreferenced shard) belongs to a save that was interrupted,
    and can be removed. The rule cannot match a live save, pids reused or not: a live
    save holds its lock until its leftovers are either committed or removed.

    Where another save is running, :py:`clean` is left for a later save. Where there are
    no locks (Windows), nothing is cleaned. A lock lasts as long as its process: a killed
    save's lock goes with it.

    Raises:
        OSError: if the folder cannot be opened or locked, naming :py:`target` (the
            save's) and saying that it is untouched (:func:`save_error`).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with save_guard(folder, lambda: print('alone: cleaning'), target=folder + '/a'):
        ...     with save_guard(folder, lambda: print('never printed: a save is running'), target=folder + '/b'):
        ...         pass
        alone: cleaning
    """

    if syscalls.flock is None:
        yield
        return
    try:
        fd = syscalls.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise save_error(error, target) from None
    try:
        try:
            syscalls.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise save_error(error, target) from None
            alone = False
        if alone:
            try:
                clean()
            except OSError:
                pass  # best effort: cleaning must not fail the save that does it
        # Shared from now on; a cleaner waiting for the lock alone waits for this save.
        try:
            syscalls.flock(fd, fcntl.LOCK_SH)
        except OSError as error:
            raise save_error(error, target) from None
        yield
    finally:
        try:
            syscalls.close(fd)  # releases the lock
        except OSError:
            pass  # a read-only descriptor: nothing of the save depends on it


def open_regular(path: str | os.PathLike, *, dir_fd: int | None = None) -> int:
    r"""Opens a file of a checkpoint for reading and returns its descriptor, refusing at
    once anything but a regular file: FIFOs (which ``tar`` keeps, and whose open
    would wait forever for a writer), devices, sockets, directories.

    The check is made on the opened descriptor (``fstat``), so the path cannot be
    swapped between a check and the open; ``O_NONBLOCK`` makes the open of a FIFO
    return at once. Every reader of every layout opens its files here.

    Raises:
        FileNotFoundError: if there is no such file.
        CheckpointError: naming the file, for anything else that is not a readable
            regular file.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> os.mkfifo(folder / 'pipe.safetensors')
        >>> open_regular(folder / 'pipe.safetensors')
        Traceback (most recent call last):
          ...
        inox_io.errors.CheckpointError: /...pipe.safetensors: a FIFO, not a regular file; refusing to read it
    """

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    shown = path if dir_fd is None else f"{path} (in an open directory)"
    try:
        fd = syscalls.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise CheckpointError(shown, f"cannot be opened ({e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(shown, f"{_kind(mode)}, not a regular file; refusing to read it")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file ignores it; restored all the same
    except BaseException:
        syscalls.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return kind
    return "not a file"


def read_regular(path: str | os.PathLike, limit: int, *, dir_fd: int | None = None) -> Tuple[bytes, os.stat_result]:
    r"""The bytes of a small regular file of a checkpoint (an index, a manifest) opened
    with :func:`open_regular`, and its status (which identifies the file read:
    ``st_dev``, ``st_ino``).

    Raises:
        FileNotFoundError: if there is no such file.
        CheckpointError: for what :func:`open_regular` refuses, a file of more than
            :py:`limit` bytes, or a failed read.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / 'index.json'
        >>> _ = path.write_text('{}')
        >>> read_regular(path, 10)[0]
        b'{}'
        >>> read_regular(path, 1)
        Traceback (most recent call last):
          ...
        inox_io.errors.CheckpointError: /...index.json: 2 bytes, more than the 1 allowed
    """

    fd = open_regular(path, dir_fd=dir_fd)
    try:
        status = os.fstat(fd)
        if status.st_size > limit:
            raise CheckpointError(path, f"{status.st_size} bytes, more than the {limit} allowed")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 2**24))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grown since the fstat
            raise CheckpointError(path, f"more than the {limit} bytes allowed")
        return b"".join(chunks), status
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e})") from None
    finally:
        syscalls.close(fd)


#: How many times in a row a reader may find its checkpoint replaced (saves in a loop)
#: before it gives up.
MAX_REPLACEMENTS = 8


def replaced(path: str | os.PathLike, status: os.stat_result) -> bool:
    r"""Whether :py:`path` is no longer the file or directory :py:`status` describes
    (an overwrite committed since it was opened, or it is gone).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / 'index.json'
        >>> _ = path.write_text('{}')
        >>> status = os.stat(path)
        >>> replaced(path, status)
        False
        >>> _ = (path.parent / 'new').write_text('{}')
        >>> syscalls.replace(path.parent / 'new', path)
        >>> replaced(path, status)
        True
    """

    try:
        now = os.stat(path)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (status.st_dev, status.st_ino)


def again_if_replaced(path: str | os.PathLike, attempt: Callable[[], T], status: Callable[[], os.stat_result | None]) -> T:
    r"""Runs :py:`attempt` (which opens what is at :py:`path`, :py:`status()` then
    describing what it opened); if it fails with :class:`CheckpointError` and
    :py:`path` was replaced meanwhile (an overwrite removing the old one as it was
    read), runs it again, :data:`MAX_REPLACEMENTS` times at most: a reader gets the new
    checkpoint, not a false report of damage.

    Example:
        >>> again_if_replaced('.', lambda: 'opened', lambda: None)
        'opened'
    """

    for _ in range(MAX_REPLACEMENTS - 1):
        try:
            return attempt()
        except CheckpointError:
            opened = status()
            if opened is None or not replaced(path, opened):
                raise
    return attempt()


def fsync_directory(path: str | os.PathLike) -> None:
    r"""Makes the entries of a directory (a rename, a new file) durable."""

    fd = syscalls.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        syscalls.fsync(fd)
    finally:
        syscalls.close(fd)


def write_all(fd: int, data) -> None:
    r"""Writes a whole buffer, looping over short writes."""

    view = memoryview(data).cast("B")
    while view:
        written = syscalls.write(fd, view)
        view = view[written:]


#: Buffers per ``writev`` call (the usual ``IOV_MAX``).
MAX_BUFFERS = 1024


def writev_all(fd: int, buffers) -> None:
    r"""Writes buffers back to back with as few system calls as possible (``writev``,
    up to :data:`MAX_BUFFERS` buffers each), looping over short writes.

    Many small arrays then cost a few calls instead of one each.
    """

    views = [memoryview(b).cast("B") for b in buffers]
    if syscalls.writev is None:
        for view in views:
            write_all(fd, view)
        return
    while views:
        views = advance(views, syscalls.writev(fd, views[:MAX_BUFFERS]))


def advance(views: List[memoryview], n: int) -> List[memoryview]:
    r"""The buffers left after a vectored call transferred :py:`n` bytes of them: those
    done whole dropped, a partly done one cut (calls may stop short anywhere).

    Example:
        >>> [bytes(v) for v in advance([memoryview(b'ab'), memoryview(b'cde')], 3)]
        [b'de']
    """

    done = 0
    while done < len(views) and n >= len(views[done]):
        n -= len(views[done])
        done += 1
    views = views[done:]
    if n:
        views[0] = views[0][n:]
    return views


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = syscalls.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def save_error(error: OSError, target: str | os.PathLike, *, committed: bool = False) -> OSError:
    r"""The error of a failed save of :py:`target`: the same errno (so the same
    :class:`OSError` subclass), naming the target and saying what it holds now.

    An error explained already of another file (one of the save's temporaries) is
    explained anew: what became of that file is not what became of :py:`target`.

    Example:
        >>> error = save_error(OSError(errno.ENOSPC, 'No space left on device'), 'ckpt/.tmp/manifest.json')
        >>> error
        OSError(28, 'No space left on device (not saved; the checkpoint there, if any, is untouched)')
        >>> save_error(error, 'ckpt').filename
        'ckpt'
    """

    if getattr(error, "state", None) is not None and error.filename == os.fspath(target):
        return error  # explained already
    if committed:
        state = "the new checkpoint is in place, but may not survive a power loss"
    else:
        state = "not saved; the checkpoint there, if any, is untouched"
    reason = getattr(error, "reason", None) or error.strerror or str(error)
    out = OSError(error.errno, f"{reason} ({state})", os.fspath(target))
    out.state = state  #: what the target holds, for callers explaining it once only
    out.reason = reason  #: what failed, without the explanation
    return out


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
        self.committed = False  #: Whether the target now holds the new file.

    def __enter__(self) -> AtomicFile:
        if not self.overwrite and self.target.exists():
            raise FileExistsError(f"{self.target} already exists; pass overwrite=True to replace it")
        # Here, and not in some later open: the saver that crashed is gone for good.
        remove_stale_temporaries(self.target)
        _ACTIVE.add(self.temp.name)  # before the file exists, so no cleaner ever sees it unlisted
        try:
            self.fd = syscalls.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as error:
            _ACTIVE.discard(self.temp.name)
            raise self.explain(error) from error
        return self

    def __exit__(self, kind, value, traceback) -> None:
        error = None
        try:
            if kind is None:
                syscalls.fsync(self.fd)
            fd, self.fd = self.fd, -1
            syscalls.close(fd)
            if kind is None:
                self.commit()
        except OSError as e:
            error = e
        finally:
            self.discard()

        # The first failure is the one to report (a failed close after a failed write
        # says nothing new), with the file and what became of it.
        failure = value if kind is not None else error
        if isinstance(failure, OSError) and not isinstance(failure, FileExistsError):
            raise self.explain(failure) from failure
        if kind is None and error is not None:
            raise error

    def explain(self, error: OSError) -> OSError:
        r"""The error of a failed save: same errno (so same :class:`OSError` subclass),
        naming the target and saying what it holds now."""

        return save_error(error, self.target, committed=self.committed)

    def discard(self) -> None:
        r"""Closes and removes the temporary, whatever happened; never raises, so that
        the error that brought us here is the one reported."""

        if self.fd >= 0:
            try:
                syscalls.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        try:
            syscalls.unlink(self.temp)
        except FileNotFoundError:
            pass  # renamed into place, or never created
        except OSError:
            pass  # left for the next save of this target (remove_stale_temporaries)
        _ACTIVE.discard(self.temp.name)

    def commit(self) -> None:
        if self.overwrite:
            syscalls.replace(self.temp, self.target)
            self.committed = True
        else:
            # A hard link fails if the target appeared meanwhile: no check-then-act race.
            try:
                syscalls.link(self.temp, self.target)
            except FileExistsError:
                raise FileExistsError(f"{self.target} already exists; pass overwrite=True to replace it") from None
            self.committed = True
            # The temporary is now a second name of the checkpoint: removing it is cleanup,
            # and a failure must not report a save that succeeded as failed.
            self.discard()
        fsync_directory(self.target.parent)


class DurableFile(AtomicFile):
    r"""Context manager writing a new file in place, made durable (``fsync``) on a clean
    exit and removed on an exception: an :class:`AtomicFile` that is its own temporary.

    For the files of a directory that is committed as a whole (the temporary of a
    checkpoint directory): they need no temporary of their own, since no reader looks
    inside the directory before its commit, and one ``fsync`` of the directory before
    the commit makes all their names durable.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / 'data'
        >>> with DurableFile(path) as f:
        ...     write_all(f.fd, b'bytes')
        >>> path.read_bytes()
        b'bytes'
        >>> with DurableFile(path.with_name('other')) as f:
        ...     raise OSError(errno.ENOSPC, 'No space left on device')
        Traceback (most recent call last):
          ...
        OSError: [Errno 28] No space left on device (not saved; the checkpoint there, if any, is untouched): '...other'
        >>> path.with_name('other').exists()
        False
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.temp = self.target

    def __enter__(self) -> DurableFile:
        try:
            self.fd = syscalls.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as error:
            raise self.explain(error) from error
        return self

    def commit(self) -> None:
        self.committed = True  # in place already: what discard keeps

    def discard(self) -> None:
        if not self.committed:
            super().discard()
