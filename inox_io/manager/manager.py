r"""The :class:`CheckpointManager`: saves steps through the save pipeline of
:mod:`inox_io.api`, in the background if asked, commits them atomically, applies its
retention policy, and restores through :func:`inox_io.load`."""

from __future__ import annotations

__all__ = ["CheckpointManager"]

import jax
import json
import numpy as np
import os
import threading
import warnings

from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping

from .. import api, distributed
from ..atomic import AtomicFile, write_all
from ..errors import CheckpointError
from ..formats import format_for, format_named, read_in_ranges
from ..storage import ObjectURL, locate, reading
from . import metadata as step_file
from .lock import DirectoryLock, DirectoryLockedError
from .preemption import PreemptionWatcher
from .retention import Retention
from .snapshot import Item, snapshot
from .stores import steps_at

PyTree = Any


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

    The directory may be a bucket prefix, ``gs://bucket/run`` or ``s3://bucket/run``:
    each step is then committed by an object written last (see
    :mod:`inox_io.manager.bucket_steps`); there is no lock: one writing manager (one
    job) per prefix. Across processes, each stages and uploads its own part of a step.

    Retention runs after each save: with :py:`max_to_keep`, only the newest
    :py:`max_to_keep` steps are kept, or, with :py:`best_fn`, the :py:`max_to_keep`
    best ones. The newest complete step (the one to resume from) and the step just
    saved are never deleted, so retention may keep N + 1 steps (best-N, or after saving
    a step older than the newest). Steps are ordered by number.

    A manager is meant for one thread: the training loop that saves and restores.

    **Across processes** (after :func:`jax.distributed.initialize`), every process
    constructs the manager on the same directory and calls :meth:`save`,
    :meth:`wait_until_finished`, :meth:`restore`, :meth:`delete`,
    :meth:`reached_preemption` and :meth:`close` together, in the same order. Each
    process writes its own shards of the arrays that span processes (a collective
    layout); arrays every process holds whole are written by process 0 only. Process
    0 holds the lock, commits each step once every process has written its part,
    applies retention, and tells the others which steps exist: :meth:`all_steps`
    answers the same on every process, and no process sees a step before it is
    complete everywhere. An error on any process fails the step on every process
    (the others get a :class:`~inox_io.CheckpointError` naming the process and its
    error) and leaves earlier steps as they were. Processes agree through the
    distributed runtime's key-value store, never through device collectives, so that
    background saves never stall or deadlock the training loop's own.

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
            By default, safetensors, or ``'sharded'`` for an item whose arrays span
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
        inox_io.manager.lock.DirectoryLockedError: ...: another CheckpointManager writes here (pid ...); ...
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
        self.retention = Retention(max_to_keep, best_fn, best_mode)
        if type(save_interval_steps) is not int or save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be a positive int, got {save_interval_steps!r}")
        if item_format is not None:
            format_named(item_format)

        self.directory = locate(directory)
        # Where the steps live, chosen here once; every other method calls the store.
        self._store = steps_at(self.directory)
        self.save_interval_steps = save_interval_steps
        self.async_save = async_save
        self.item_format = item_format
        self.read_only = read_only

        # Complete steps never change but may be deleted and saved anew, which only a
        # writer does (under the lock): only a writer caches their metadata.
        self._metadata: Dict[int, Dict[str, Any]] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock: DirectoryLock | None = None
        self._closed = False
        self._preemption = PreemptionWatcher()
        # Across processes, the steps process 0 last announced (see all_steps).
        self._steps: List[int] | None = None

        if read_only:
            if not self._store.exists():
                raise FileNotFoundError(f"{self.directory}: no such checkpoint directory")
            return
        # The names of this manager's agreements, the same on every process.
        self._scope = distributed.name("manager")
        with distributed.scope(self._scope):
            error = None
            if distributed.is_primary():
                try:
                    self._lock = self._store.start_writer()
                except BaseException as e:
                    error = e
            refusal = distributed.broadcast("lock", None if error is None else [type(error).__name__, str(error)])
            if error is not None:
                if self._lock is not None:
                    self._lock.release()
                raise error
            if refusal is not None:
                kind, message = refusal
                if kind == DirectoryLockedError.__name__:
                    raise DirectoryLockedError(message)
                raise CheckpointError(self.directory, f"failed on process 0: {kind}: {message}")
            if jax.process_count() > 1:
                self._announce(distributed.broadcast("steps", self._steps_on_disk()))

    # Steps

    def step_directory(self, step: int) -> Path | ObjectURL:
        r"""The directory of a step (complete or not)."""

        return self._store.url(step)

    def all_steps(self) -> List[int]:
        r"""The complete steps, in increasing order: as on disk now, or, for a writer
        across processes, as process 0 announced at the last commit or deletion (the
        same answer on every process)."""

        self._check_open()
        if self._steps is not None:
            return list(self._steps)
        return self._steps_on_disk()

    def _steps_on_disk(self) -> List[int]:
        return self._store.steps()

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
            metadata = self._store.metadata(step)
            if metadata is None:
                raise FileNotFoundError(f"{self.step_directory(step)}: no complete step {step}")
            if not self.read_only:
                self._metadata[step] = metadata
        return json.loads(json.dumps(metadata))  # a copy the caller may change

    def metrics(self, step: int) -> Dict[str, Any] | None:
        r"""The metrics saved with a step."""

        return self.metadata(step)["metrics"]

    def _all_metrics(self, steps: List[int]) -> Dict[int, Dict[str, Any] | None]:
        return {step: self.metrics(step) for step in steps}

    def best_step(self) -> int | None:
        r"""The complete step of best score, or :py:`None` if no step has one.

        Raises:
            ValueError: if the manager has no :py:`best_fn`.
        """

        if self.retention.best_fn is None:
            raise ValueError("this CheckpointManager has no best_fn to rank steps")
        return self.retention.best(self._all_metrics(self.all_steps()))

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
        self.wait_until_finished()
        final = self.step_directory(step)
        with distributed.scope(self._scope):
            # Every process checks and takes its snapshot; all agree before any writes,
            # so that a bad item on one process fails the step on all, at once.
            held, temp, error = [], None, None
            try:
                if not isinstance(items, Mapping) or not items:
                    raise TypeError("items must be a non-empty dict of trees")
                metrics = step_file.scalar_metrics(metrics)
                if step in self.all_steps():
                    raise ValueError(f"{final}: step {step} is already saved; delete it first")
                if os.path.lexists(final):
                    raise ValueError(f"{final} exists but is not a complete step; remove it first")
                held = [snapshot(name, tree, self.item_format) for name, tree in items.items()]
                for item in held:
                    if item.fmt is not None and not (item.fmt.collective or distributed.is_primary()):
                        item.arrays = None  # process 0 writes what every process holds whole
                temp = self._store.temporary(step)
            except BaseException as e:
                error = e
            try:
                distributed.agree(final, error)
            except BaseException:
                if temp is not None:
                    self._store.discard(temp)
                raise

        if self.async_save:
            self._thread = threading.Thread(
                target=self._background, args=(step, temp, held, metrics), name=f"inox_io-save-{step}"
            )
            self._thread.start()  # not a daemon: a pending save finishes at interpreter exit
        else:
            self._commit(step, temp, held, metrics)
        return True

    def _background(self, step: int, temp: Path, held: List[Item], metrics: Dict[str, Any] | None) -> None:
        try:
            self._commit(step, temp, held, metrics)
        except BaseException as e:
            self._error = e

    def _commit(self, step: int, temp: Path, held: List[Item], metrics: Dict[str, Any] | None) -> None:
        r"""Writes this process's part of a step, then, once every process has, process
        0 commits it and the others learn the outcome."""

        final = self.step_directory(step)
        primary = distributed.is_primary()
        with distributed.scope(f"{self._scope}/step-{step}"):
            error = None
            try:
                with self._store.staging():
                    items = self._write_items(temp, held)
                if primary:
                    self._write_metadata(step, temp, items, metrics)
            except BaseException as e:
                error = e
            try:
                distributed.agree(final, error)
            except BaseException:
                self._store.discard(temp)
                raise
            try:
                self._store.commit(temp, step)  # on every process: a bucket's gathers their uploads
            except BaseException as e:
                self._store.discard(temp)
                if primary:  # the others wait to hear (those that failed with it do not listen)
                    distributed.broadcast("committed", {"error": f"{type(e).__name__}: {e}"})
                raise
            if not primary:
                outcome = distributed.broadcast("committed", None)
                if outcome["error"] is not None:
                    raise CheckpointError(final, f"failed on process 0: {outcome['error']}; nothing was committed")
                self._announce(outcome["steps"])
                return
            retention = None
            try:
                self._retain(step)
            except BaseException as e:
                retention = e  # the step is committed: the others must hear it
            # Only the other processes need the list: one process lists the disk itself.
            steps = self._steps_on_disk() if jax.process_count() > 1 else None
            self._announce(distributed.broadcast("committed", {"error": None, "steps": steps})["steps"])
            if retention is not None:
                raise retention

    def _announce(self, steps: List[int]) -> None:
        r"""Across processes: the steps process 0 says exist, on every process."""

        if jax.process_count() > 1:
            self._steps = steps
            for step in set(self._metadata) - set(steps):
                del self._metadata[step]

    def _write_items(self, temp: Path, held: List[Item]) -> Dict[str, Dict[str, Any]]:
        items = {}
        for item in held:
            if item.fmt is None:
                items[item.name] = {"json": item.json}
                continue
            path = item.fmt.item_path(temp, item.name)
            if item.fmt.collective or distributed.is_primary():
                item.fmt.write(path, item.manifest, item.arrays, overwrite=False)
                item.arrays = None  # frees the snapshot early (host copies, held CPU buffers)
                if format_for(path) is not item.fmt:
                    raise ValueError(f"{path}: written as {item.fmt.name} but would not be read back as such")
            items[item.name] = {"file": path.name, "format": item.fmt.name}
        return items

    def _write_metadata(self, step: int, temp: Path, items: Dict[str, Any], metrics: Dict[str, Any] | None) -> None:
        # Required when listing a folder: without it, a step is not complete. Written
        # by process 0 once its items are; the commit comes after every process's.
        with AtomicFile(temp / step_file.METADATA_FILE) as f:
            write_all(f.fd, json.dumps(step_file.step_metadata(step, items, metrics), indent=1).encode())

    def _retain(self, saved: int) -> None:
        if self.retention.max_to_keep is None:
            return
        metrics = self._all_metrics(self._steps_on_disk())  # process 0's own view: it decides
        keep = self.retention.keep(metrics, saved)
        for step in metrics:
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
        with distributed.scope(self._scope):
            error = None
            if distributed.is_primary():
                try:
                    self._delete(step)
                except BaseException as e:
                    error = e
            distributed.agree(self.step_directory(step), error)
            if jax.process_count() > 1:
                self._announce(distributed.broadcast("steps", self._steps_on_disk()))

    def _delete(self, step: int) -> None:
        self._store.delete(step)
        self._metadata.pop(step, None)

    def wait_until_finished(self) -> None:
        r"""Waits for the save in flight, if any, and raises its error, if any."""

        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            error.add_note(f"raised by a background save to {self.directory}")
            raise error

    def reached_preemption(self, step: int) -> bool:
        r"""Whether the job was told to stop (``SIGTERM``, or a preemption notice that
        JAX's distributed runtime forwards): then save :py:`step` with
        :py:`force=True`, :meth:`wait_until_finished`, and exit. Across processes,
        every process asks at every step, and all get :py:`True` at the same step. In
        one process, the first call installs a ``SIGTERM`` handler (the previous one
        is back after :meth:`close`).

        Example:
            >>> import os, signal, tempfile
            >>> manager = CheckpointManager(tempfile.mkdtemp())
            >>> for step in range(100):
            ...     if step == 3:
            ...         os.kill(os.getpid(), signal.SIGTERM)  # the scheduler, say
            ...     if manager.reached_preemption(step):
            ...         _ = manager.save(step, {'w': np.zeros(2)}, force=True)
            ...         break
            >>> manager.close()
            >>> CheckpointManager(manager.directory, read_only=True).all_steps()
            [3]
        """

        self._check_open()
        return self._preemption.reached(step)

    # Restoring

    def restore(
        self,
        step: int | None = None,
        like: Mapping[str, PyTree] | None = None,
        *,
        shardings: Any = None,
        strict: bool = True,
        verify: bool = True,
        statics: str = "like",
    ) -> Dict[str, PyTree]:
        r"""Restores a step, the latest by default.

        Returns every JSON item of the step, as saved, and every array item named in
        :py:`like`, loaded into the structure of its ``like`` tree with
        :func:`inox_io.load` (ties restored). Array items not in :py:`like` are not
        read; a ``like`` given for a JSON item is ignored. Without :py:`like`, every
        array item is loaded as :func:`inox_io.load` loads a file without one: a flat
        dictionary of its positions (a ``like`` is what rebuilds modules).

        Arguments:
            step: The step; the latest complete one if :py:`None`.
            like: Item names and their ``like`` trees (concrete or abstract arrays).
            shardings: For every array item, as in :func:`inox_io.load`: one
                :class:`jax.sharding.Sharding` for all items, or a dict of item names
                and their shardings (a sharding, a tree of shardings, a function).
                By default, the shardings of the ``like`` leaves.
            strict: As in :func:`inox_io.load`.
            verify: Whether to verify the checksums of the arrays read.
            statics: As in :func:`inox_io.load`: where the non-array leaves of the
                array items come from, ``"like"`` (warning where the file differs) or
                ``"file"``.

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
        everything = like is None
        like = dict(like or {})
        unknown = sorted(set(like) - set(saved))
        if unknown:
            raise CheckpointError(folder, f"no item(s) {', '.join(unknown)}; the step holds {', '.join(saved)}")

        out = {}
        for name, entry in saved.items():
            if "json" in entry:
                out[name] = entry["json"]
            elif everything or like.get(name) is not None:
                try:
                    # The item's files only (with the shards beside an index), on object storage.
                    with reading(folder, part=name, in_ranges=read_in_ranges) as local:
                        out[name] = api.load(
                            local / entry["file"], like.get(name), strict=strict, verify=verify, statics=statics,
                            shardings=_item_shardings(shardings, name),
                        )  # fmt: skip
                except FileNotFoundError:
                    if step in self._steps_on_disk():
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
            self._preemption.close()
            if not self.read_only:
                with distributed.scope(self._scope):
                    distributed.barrier("close")  # no process releases the lock while another writes
            if self._lock is not None:
                self._lock.release()

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
