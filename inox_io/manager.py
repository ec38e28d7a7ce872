r"""A directory of numbered training checkpoints: atomic steps, asynchronous saves,
retention, and a lock against a second writer.

Layout of a checkpoint directory:

.. code-block:: text

    <directory>/
        .inox_io-lock                 held (flock) by the one writing manager
        100/                          a complete step
            model.safetensors         one checkpoint per array item, ties kept
            opt_state.safetensors
            _CHECKPOINT.json          step, time, metrics, items; written last
        .inox_io-tmp-200.<pid>.<hex>/ a step being written, or left by a crash

A step is built under a temporary name (:data:`inox_io.atomic.TEMP_PREFIX`) and
renamed into place once every file in it is written and fsynced, so readers see a
step entirely or not at all. Deletion (retention) renames a step away before removing
its files, for the same reason. The temporaries of a crashed writer are removed when
the next writer opens the directory.

An *item* is one entry of the dictionary given to :meth:`CheckpointManager.save`:

* a tree holding arrays (a model, an optimizer state, a PRNG key) is saved as one
  checkpoint file (see :func:`inox_io.save`), and restored into the structure of a
  ``like`` tree, its non-array leaves (hyper-parameters) coming from ``like``;
* a plain JSON value (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``,
  ``None``; no arrays), such as a step counter or a data-loader position, is kept in
  ``_CHECKPOINT.json`` and restored as saved, without a ``like``.

Example:
    >>> import tempfile
    >>> model = nn.Linear(2, 3, key=jax.random.key(0))
    >>> with CheckpointManager(tempfile.mkdtemp(), max_to_keep=2) as manager:
    ...     for step in range(1, 5):
    ...         _ = manager.save(step, {'model': model, 'data': {'offset': 32 * step}})
    ...     manager.wait_until_finished()
    ...     manager.all_steps()
    ...     restored = manager.restore(like={'model': model})
    [3, 4]
    >>> restored['data'], restored['model']
    ({'offset': 128}, Linear(bias=Parameter(float32[3]), weight=Parameter(float32[2, 3])))
"""

from __future__ import annotations

__all__ = ["CheckpointManager", "DirectoryLockedError", "METADATA_FILE", "LOCK_FILE"]

import dataclasses
import jax
import json
import math
import numpy as np
import os
import re
import shutil
import socket
import threading
import time
import warnings

from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping

try:
    import fcntl
except ImportError:  # not POSIX: no lock, see CheckpointManager
    fcntl = None

from inox.tree import is_array

from . import api
from .atomic import AtomicFile, fsync_directory, remove_temporaries, temporary_path, write_all
from .dtypes import is_key_dtype
from .errors import CheckpointError
from .formats import FORMATS, format_for
from .formats.base import Format
from .manifest import Manifest, build, structure_statics, tree_arrays

PyTree = Any

METADATA_FILE = "_CHECKPOINT.json"  #: In each step directory, written last.
LOCK_FILE = ".inox_io-lock"  #: In the checkpoint directory, locked by the writer.

_KIND = "inox_io.checkpoint"
_VERSION = 1
_ITEM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_STEP_NAME = re.compile(r"(0|[1-9][0-9]*)\Z")


class DirectoryLockedError(RuntimeError):
    r"""Another :class:`CheckpointManager` writes to this directory."""


def is_json(x: Any) -> bool:
    r"""Whether :py:`x` is a JSON value that reads back equal and of the same types.

    Exact types only: tuples would read back as lists, NumPy scalars as Python ones.

    Example:
        >>> is_json({'epoch': 2, 'files': ['a', 'b'], 'lr': 1e-3}), is_json((1, 2))
        (True, False)
    """

    if x is None or type(x) in (bool, int, float, str):
        return True
    if type(x) is list:
        return all(is_json(v) for v in x)
    if type(x) is dict:
        return all(type(k) is str and is_json(v) for k, v in x.items())
    return False


def _on_cpu(x: jax.Array) -> bool:
    return all(device.platform == "cpu" for device in x.sharding.device_set)


def _host_array(x: Any) -> Any:
    r"""The values of an array, on the host, that nothing the caller does later can
    change: in-place writes to a NumPy array, donating a JAX array to a jitted call, or
    deleting it."""

    if isinstance(x, jax.Array):
        if is_key_dtype(x.dtype):
            x = jax.random.key_data(x)  # the manifest keeps the key implementation
        if not x.is_fully_addressable:
            # Cannot be gathered here; a jax.Array is immutable, and a directory format
            # writes each process' shards.
            return x
        if _on_cpu(x):
            # No copy (1 GiB would block the caller ~0.2 s): a jax.Array is immutable,
            # and the read-only view np.asarray returns holds an external reference to
            # its buffer. While it does, XLA's CPU client runs a jit call that donates
            # the buffer without donating it (on purpose, for such holders), and
            # x.delete() leaves the memory to the view. Sharded arrays are gathered
            # into a fresh buffer instead.
            return np.asarray(x)
        # Not on CPU: the transfer copies anyway, and a view held here (of pinned host
        # memory) would make the caller's next donating jit call fail, as XLA's other
        # clients refuse to donate a buffer with an external reference.
    # NumPy arrays may be mutated in place by the caller.
    return np.array(x, copy=True)


@dataclasses.dataclass
class _Item:
    name: str
    json: Any = None  # for JSON items
    fmt: Format | None = None  # for array items
    manifest: Manifest | None = None
    arrays: Dict[str, Any] | None = None

    def path(self, folder: Path) -> Path:
        r"""Where the item goes in :py:`folder`: ``<name>.<format>`` where the format
        knows that suffix, else ``<name>`` (a directory format takes paths without one)."""

        for candidate in (folder / f"{self.name}.{self.fmt.name}", folder / self.name):
            try:
                if format_for(candidate) is self.fmt:
                    return candidate
            except ValueError:
                pass
        return folder / f"{self.name}.{self.fmt.name}"  # refused once written, see _write


def _format_named(name: str) -> Format:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    known = ", ".join(repr(f.name) for f in FORMATS)
    raise ValueError(f"unknown item format {name!r}; known formats: {known}")


def _scalar_metrics(metrics: Mapping[str, Any] | None) -> Dict[str, Any] | None:
    if metrics is None:
        return None
    out = {}
    for key, value in metrics.items():
        if is_array(value) and math.prod(np.shape(value)) == 1:
            value = np.asarray(value).item()  # a loss fresh from jit
        if type(key) is not str or not is_json(value):
            raise TypeError(f"metric {key!r}: str keys and JSON (or scalar array) values expected, found {value!r}")
        out[key] = value
    return out


class CheckpointManager:
    r"""Saves and restores numbered training checkpoints in a directory.

    Each :meth:`save` writes a step directory holding one checkpoint per item; it
    appears only once complete (atomic rename). With :py:`async_save`, :meth:`save`
    returns once it holds a snapshot of the arrays, and the files are written by a
    background thread: later changes to the caller's arrays (in-place NumPy writes,
    donated or deleted JAX buffers) cannot change what is written. NumPy arrays and
    arrays on accelerators are copied to the host; JAX arrays on the CPU, being
    immutable, are not copied but held until written: while the save is in flight,
    a jitted call that donates them does not reuse their memory (it runs without
    donating them), and deleting them frees it only once written. An error of a
    background save is raised by the next call of :meth:`save`,
    :meth:`wait_until_finished`, :meth:`restore` or :meth:`close`.

    One manager at a time may write to a directory: it holds an exclusive
    :func:`fcntl.flock` on :data:`LOCK_FILE` from its creation to :meth:`close`, and a
    second writer (in this process or another) gets a :class:`DirectoryLockedError`.
    Read-only managers take no lock and may read while a writer saves: they only ever
    see complete steps. (The lock is advisory and local: it does not protect directories
    on network file systems without flock support, nor exists on Windows.)

    Retention runs after each save: with :py:`max_to_keep`, only the newest
    :py:`max_to_keep` steps are kept, or, with :py:`best_fn`, the :py:`max_to_keep`
    best ones. The newest complete step (the one to resume from) and the step just
    saved are never deleted, so retention may keep N + 1 steps (best-N, or after saving
    a step older than the newest). Steps are ordered by number.

    A manager is meant for one thread: the training loop that saves and restores.

    Arguments:
        directory: The checkpoint directory, created if needed.
        max_to_keep: How many steps to keep; all if :py:`None`.
        best_fn: Scores a step from its metrics (:py:`metrics -> float`). Steps saved
            without metrics, or scored NaN, rank below all others.
        best_mode: Whether the best score is the highest (``'max'``) or lowest (``'min'``).
        save_interval_steps: :meth:`save` saves only steps divisible by this number,
            unless forced.
        async_save: Whether files are written in a background thread.
        item_format: The format of array items: a format name (``'safetensors'``,
            ``'msgpack'``, or a directory format such as ``'orbax'`` where registered).
            By default, safetensors, or ``'orbax'`` for an item whose arrays span
            several processes.
        read_only: Whether this manager only reads: no lock, no cleanup, no saving.

    Example:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> manager = CheckpointManager(directory, max_to_keep=1, best_fn=lambda m: m['loss'], best_mode='min')
        >>> for step, loss in [(1, 0.5), (2, 0.2), (3, 0.4)]:
        ...     _ = manager.save(step, {'w': np.full(2, step)}, metrics={'loss': loss})
        >>> manager.wait_until_finished()
        >>> manager.all_steps(), manager.best_step(), manager.latest_step()  # best and newest
        ([2, 3], 2, 3)
        >>> CheckpointManager(directory)
        Traceback (most recent call last):
          ...
        inox_io.manager.DirectoryLockedError: ...: another CheckpointManager writes here (pid ...); ...
        >>> manager.close()
        >>> CheckpointManager(directory, read_only=True).restore(2, like={'w': np.zeros(2, int)})
        {'w': array([2, 2])}
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = None,
        best_fn: Callable[[Dict[str, Any]], float] | None = None,
        best_mode: Literal["max", "min"] = "max",
        save_interval_steps: int = 1,
        async_save: bool = True,
        item_format: str | None = None,
        read_only: bool = False,
    ):
        if max_to_keep is not None and (type(max_to_keep) is not int or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be a positive int or None, got {max_to_keep!r}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if type(save_interval_steps) is not int or save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be a positive int, got {save_interval_steps!r}")
        if item_format is not None:
            _format_named(item_format)

        self.directory = Path(directory)
        self.max_to_keep = max_to_keep
        self.best_fn = best_fn
        self.best_mode = best_mode
        self.save_interval_steps = save_interval_steps
        self.async_save = async_save
        self.item_format = item_format
        self.read_only = read_only

        # Complete steps never change but may be deleted and saved anew, which only a
        # writer does (under the lock): only a writer caches their metadata.
        self._metadata: Dict[int, Dict[str, Any]] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock_fd = -1
        self._closed = False

        if read_only:
            if not self.directory.is_dir():
                raise FileNotFoundError(f"{self.directory}: no such checkpoint directory")
            return

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock()
        # Holding the lock, no other writer is active: every temporary is a leftover.
        remove_temporaries(self.directory)

    # Lock

    def _lock(self) -> None:
        if fcntl is None:
            warnings.warn("fcntl is unavailable: this CheckpointManager cannot lock its directory", stacklevel=3)
            return
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            os.close(fd)  # releases the flock; the file stays, so that no two inodes race

    # Steps

    def step_directory(self, step: int) -> Path:
        r"""The directory of a step (complete or not)."""

        return self.directory / str(step)

    def all_steps(self) -> List[int]:
        r"""The complete steps, in increasing order, as on disk now."""

        self._check_open()
        steps = []
        for entry in os.scandir(self.directory):
            if _STEP_NAME.match(entry.name) and os.path.isfile(os.path.join(entry.path, METADATA_FILE)):
                steps.append(int(entry.name))
        return sorted(steps)

    def latest_step(self) -> int | None:
        r"""The newest complete step, or :py:`None`."""

        steps = self.all_steps()
        return steps[-1] if steps else None

    def metadata(self, step: int) -> Dict[str, Any]:
        r"""The metadata of a complete step: ``step``, ``time`` (Unix seconds),
        ``metrics`` and ``items`` (per item, its ``file`` and ``format``, or its
        ``json`` value).

        Raises:
            FileNotFoundError: if the step is not complete.
            CheckpointError: if its metadata is damaged.
        """

        self._check_open()
        metadata = self._metadata.get(step)
        if metadata is None:
            path = self.step_directory(step) / METADATA_FILE
            try:
                text = path.read_bytes()
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.step_directory(step)}: no complete step {step}") from None
            metadata = _parse_metadata(text, path, step)
            if not self.read_only:
                self._metadata[step] = metadata
        return json.loads(json.dumps(metadata))  # a copy the caller may change

    def metrics(self, step: int) -> Dict[str, Any] | None:
        r"""The metrics saved with a step."""

        return self.metadata(step)["metrics"]

    def _score(self, step: int) -> float | None:
        metrics = self.metrics(step)
        if metrics is None:
            return None
        score = float(self.best_fn(metrics))
        if math.isnan(score):
            return None
        return score if self.best_mode == "max" else -score

    def _ranked(self, steps: List[int]) -> List[int]:
        r"""Steps from best to worst; unscored ones last; newer first among equals."""

        scores = {step: self._score(step) for step in steps}
        return sorted(steps, key=lambda s: (scores[s] is not None, scores[s] or 0.0, s), reverse=True)

    def best_step(self) -> int | None:
        r"""The complete step of best score, or :py:`None` if no step has one.

        Raises:
            ValueError: if the manager has no :py:`best_fn`.
        """

        if self.best_fn is None:
            raise ValueError("this CheckpointManager has no best_fn to rank steps")
        ranked = self._ranked(self.all_steps())
        return ranked[0] if ranked and self._score(ranked[0]) is not None else None

    # Saving

    def should_save(self, step: int) -> bool:
        r"""Whether :meth:`save` would save this step without :py:`force`."""

        return step % self.save_interval_steps == 0

    def save(
        self,
        step: int,
        items: Mapping[str, PyTree],
        *,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        r"""Saves a step, if :py:`force` or :meth:`should_save`.

        Waits for the previous save to finish (one save is in flight at a time, which
        bounds the host memory used), takes a snapshot of the arrays (see
        :class:`CheckpointManager`), then writes, in the background with
        :py:`async_save`.

        Arguments:
            step: A non-negative step number, not already saved.
            items: Item names (letters, digits, ``_``, ``-``) and their trees.
            metrics: JSON values (scalar arrays are converted), for :py:`best_fn`.
            force: Whether to save regardless of :py:`save_interval_steps`.

        Returns:
            Whether a save was started.

        Raises:
            ValueError: if the step is already saved; :meth:`delete` it first.
            TypeError: for an item that cannot be saved.
            PermissionError: if the manager is read-only.
        """

        self._check_open()
        if self.read_only:
            raise PermissionError(f"{self.directory}: this CheckpointManager is read-only")
        if not (type(step) is int or isinstance(step, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        if not (force or self.should_save(step)):
            return False
        if jax.process_count() > 1:
            raise NotImplementedError("CheckpointManager commits steps from a single process only")
        if not isinstance(items, Mapping) or not items:
            raise TypeError("items must be a non-empty dict of trees")
        metrics = _scalar_metrics(metrics)

        self.wait_until_finished()
        if step in self.all_steps():
            raise ValueError(f"{self.step_directory(step)}: step {step} is already saved; delete it first")
        if os.path.lexists(self.step_directory(step)):
            raise ValueError(f"{self.step_directory(step)} exists but is not a complete step; remove it first")

        snapshot = [self._snapshot(name, tree) for name, tree in items.items()]
        if self.async_save:
            self._thread = threading.Thread(
                target=self._background, args=(step, snapshot, metrics), name=f"inox_io-save-{step}"
            )
            self._thread.start()  # not a daemon: a pending save finishes at interpreter exit
        else:
            self._write(step, snapshot, metrics)
        return True

    def _snapshot(self, name: str, tree: PyTree) -> _Item:
        if type(name) is not str or not _ITEM_NAME.match(name):
            raise ValueError(f"item name {name!r}: letters, digits, '_' and '-' expected")
        if is_json(tree):
            return _Item(name, json=json.loads(json.dumps(tree)))  # a copy, as saved
        leaves = jax.tree.leaves(tree)
        if not any(is_array(leaf) for leaf in leaves):
            raise TypeError(
                f"item {name!r} holds no arrays and is not JSON (dict, list, str, int, float, bool, "
                f"None): its values could not be restored; found {type(tree).__name__}"
            )

        manifest, arrays = build(tree)
        spanning = any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in arrays.values())
        fmt = _format_named(self.item_format or ("orbax" if spanning else "safetensors"))
        for x in arrays.values():
            if (
                isinstance(x, jax.Array)
                and x.is_fully_addressable
                and not is_key_dtype(x.dtype)
                and not _on_cpu(x)
            ):
                x.copy_to_host_async()  # all transfers at once, then one copy each
        return _Item(name, fmt=fmt, manifest=manifest, arrays={k: _host_array(x) for k, x in arrays.items()})

    def _background(self, step: int, snapshot: List[_Item], metrics: Dict[str, Any] | None) -> None:
        try:
            self._write(step, snapshot, metrics)
        except BaseException as e:
            self._error = e

    def _write(self, step: int, snapshot: List[_Item], metrics: Dict[str, Any] | None) -> None:
        final = self.step_directory(step)
        temp = temporary_path(final)
        temp.mkdir()
        try:
            items = {}
            for item in snapshot:
                if item.fmt is None:
                    items[item.name] = {"json": item.json}
                    continue
                path = item.path(temp)
                item.fmt.write(path, item.manifest, item.arrays, overwrite=False)
                item.arrays = None  # frees the snapshot early (host copies, held CPU buffers)
                if format_for(path) is not item.fmt:
                    raise ValueError(f"{path}: written as {item.fmt.name} but would not be read back as such")
                items[item.name] = {"file": path.name, "format": item.fmt.name}

            metadata = {
                "format": _KIND,
                "version": _VERSION,
                "step": step,
                "time": time.time(),
                "metrics": metrics,
                "items": items,
            }
            # Written last, and required when listing: a step without it is not complete.
            with AtomicFile(temp / METADATA_FILE) as f:
                write_all(f.fd, json.dumps(metadata, indent=1).encode())
            fsync_directory(temp)
            if final.exists():  # os.rename would replace an empty directory
                raise FileExistsError(f"{final} appeared during the save")
            os.rename(temp, final)
            fsync_directory(self.directory)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._retain(step)

    def _retain(self, saved: int) -> None:
        if self.max_to_keep is None:
            return
        steps = self.all_steps()
        if self.best_fn is None:
            keep = set(steps[-self.max_to_keep :])
        else:
            keep = set(self._ranked(steps)[: self.max_to_keep])
        keep.add(steps[-1])  # the newest complete step: the one to resume from
        keep.add(saved)  # and the one just written, were it older (after a rollback)
        for step in steps:
            if step not in keep:
                self._delete(step)

    def delete(self, step: int) -> None:
        r"""Deletes a complete step.

        Raises:
            FileNotFoundError: if there is no such step.
        """

        self._check_open()
        if self.read_only:
            raise PermissionError(f"{self.directory}: this CheckpointManager is read-only")
        self.wait_until_finished()
        if step not in self.all_steps():
            raise FileNotFoundError(f"{self.step_directory(step)}: no complete step {step}")
        self._delete(step)

    def _delete(self, step: int) -> None:
        final = self.step_directory(step)
        # Renamed away first: a crash while removing files leaves a temporary, cleaned
        # at the next start, never a step that looks complete and is not.
        trash = temporary_path(final)
        os.rename(final, trash)
        fsync_directory(self.directory)
        self._metadata.pop(step, None)
        shutil.rmtree(trash, ignore_errors=True)

    def wait_until_finished(self) -> None:
        r"""Waits for the save in flight, if any, and raises its error, if any."""

        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            error.add_note(f"raised by a background save to {self.directory}")
            raise error

    # Restoring

    def restore(
        self,
        step: int | None = None,
        like: Mapping[str, PyTree] | None = None,
        *,
        shardings: Any = None,
        strict: bool = True,
        verify: bool = True,
    ) -> Dict[str, PyTree]:
        r"""Restores a step, the latest by default.

        Returns every JSON item of the step, as saved, and every array item named in
        :py:`like`, loaded into the structure of its ``like`` tree with
        :func:`inox_io.load` (ties restored). Array items not in :py:`like` are not
        read; a ``like`` given for a JSON item is ignored.

        Arguments:
            step: The step; the latest complete one if :py:`None`.
            like: Item names and their ``like`` trees (concrete or abstract arrays).
            shardings: For every array item, as in :func:`inox_io.load`: one
                :class:`jax.sharding.Sharding` for all items, or a dict of item names
                and their shardings (a sharding, a tree of shardings, a function).
                By default, the shardings of the ``like`` leaves.
            strict: As in :func:`inox_io.load`.
            verify: Whether to verify the checksums of the arrays read.

        Raises:
            FileNotFoundError: if there is no complete step (to restore).
            CheckpointError: if a file is damaged or does not fit its ``like``, if
                :py:`like` names an item the step lacks, or if the step was deleted
                while being read.
        """

        self._check_open()
        self.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"{self.directory}: no complete checkpoint to restore")
        folder = self.step_directory(step)
        saved = self.metadata(step)["items"]
        like = dict(like or {})
        unknown = sorted(set(like) - set(saved))
        if unknown:
            raise CheckpointError(folder, f"no item(s) {', '.join(unknown)}; the step holds {', '.join(saved)}")

        out = {}
        for name, entry in saved.items():
            if "json" in entry:
                out[name] = entry["json"]
            elif like.get(name) is not None:
                path = folder / entry["file"]
                try:
                    out[name] = api.load(path, like[name], strict=strict, verify=verify, shardings=_item_shardings(shardings, name))
                    _warn_statics(path, name, like[name])
                except FileNotFoundError:
                    if folder.exists():
                        raise
                    raise CheckpointError(
                        folder, f"step {step} was deleted while being restored (retention of the writer?)"
                    ) from None
        return out

    # Life cycle

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.directory}: this CheckpointManager is closed")

    def close(self) -> None:
        r"""Waits for the save in flight, then releases the lock. Idempotent."""

        if self._closed:
            return
        try:
            self.wait_until_finished()
        finally:
            self._closed = True
            self._unlock()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
            return
        # An exception is propagating: do not hide it behind an error of the last save.
        try:
            self.close()
        except Exception as e:
            warnings.warn(f"{self.directory}: the last save failed too: {e!r}", stacklevel=2)

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writer"
        return f"CheckpointManager({str(self.directory)!r}, {mode}, steps={self.all_steps() if not self._closed else '?'})"


def _item_shardings(shardings: Any, name: str) -> Any:
    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        return shardings
    if isinstance(shardings, Mapping):
        return shardings.get(name)
    raise TypeError("shardings must be a Sharding or a dict of item names and their shardings")


def _warn_statics(path: Path, name: str, like: PyTree) -> None:
    r"""Warns when a non-array leaf of the file differs from that of like: like wins,
    as with :func:`inox_io.load`, which surprises for a counter kept among arrays."""

    saved, wanted = api.inspect(path).statics, structure_statics(tree_arrays(like)[0])
    differ = [
        f"{key} is {saved[key]!r} in the checkpoint, {wanted[key]!r} in like"
        for key in sorted(set(saved) & set(wanted))
        if type(saved[key]) is not type(wanted[key]) or saved[key] != wanted[key]
    ]
    if differ:
        warnings.warn(
            f"item {name!r}: non-array leaves come from like: {'; '.join(differ)}. "
            "Save values that change (counters, positions) as their own JSON item.",
            stacklevel=3,
        )


def _parse_metadata(text: bytes, path: Path, step: int) -> Dict[str, Any]:
    def fail(message: str):
        raise CheckpointError(path, message)

    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        fail(f"not valid JSON ({e})")
    if not isinstance(data, dict) or data.get("format") != _KIND:
        fail(f"format {_KIND!r} expected")
    if data.get("version") != _VERSION:
        fail(f"unknown version {data.get('version')!r}; this library reads version {_VERSION}")
    if data.get("step") != step:
        fail(f"says step {data.get('step')!r}, in the directory of step {step}")
    if data.get("metrics") is not None and not isinstance(data["metrics"], dict):
        fail("metrics: an object or null expected")
    items = data.get("items")
    if not isinstance(items, dict):
        fail("items: an object expected")
    for name, entry in items.items():
        valid = isinstance(entry, dict) and (
            list(entry) == ["json"]
            or (
                sorted(entry) == ["file", "format"]
                and isinstance(entry["file"], str)
                and entry["file"] == Path(entry["file"]).name  # no escaping the step directory
                and entry["file"] not in ("", ".", "..")
            )
        )
        if not _ITEM_NAME.match(name) or not valid:
            fail(f"items: malformed entry {name!r}: {entry!r}")
    return data
