r"""The steps of a :class:`~inox_io.CheckpointManager` whose directory is on a file
system: each step is a numbered folder, written under a temporary name and renamed
into place once its metadata file, written last, is durable; deleted by renaming it
away first. Folders of steps that orbax's CheckpointManager wrote are listed and read
too (:mod:`.orbax_steps`), so that a read-only manager opens orbax's directories.

The other store of steps is :class:`~inox_io.manager.bucket_steps.BucketSteps`, with
the same methods: the manager calls these and never asks which store it has.

Example:
    >>> import tempfile
    >>> steps = DiskSteps(Path(tempfile.mkdtemp()))
    >>> temp = steps.temporary(3)
    >>> _ = (temp / METADATA_FILE).write_text('{}')
    >>> steps.commit(temp, 3)
    >>> steps.steps(), steps.url(3).name
    ([3], '3')
"""

from __future__ import annotations

__all__ = ["DiskSteps"]

import contextlib
import os
import shutil

from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List

from .. import distributed
from ..atomic import fsync_directory, remove_temporaries, temporary_path
from ..errors import CheckpointError
from ..formats.directory_commit import MANIFEST, disk_bytes
from . import metadata as step_file
from . import orbax_steps
from .lock import LOCK_FILE, DirectoryLock
from .metadata import METADATA_FILE, STEP_NAME


class DiskSteps:
    r"""Lists, reads, commits and deletes the steps in a directory."""

    def __init__(self, root: Path):
        self.root = root

    def url(self, step: int) -> Path:
        r"""The folder of a step (complete or not)."""

        return self.root / str(step)

    def exists(self) -> bool:
        return self.root.is_dir()

    def start_writer(self) -> DirectoryLock:
        r"""Takes the writer's lock (process 0 only) and removes leftovers of earlier
        saves: holding the lock, no other writer is active.

        Raises:
            CheckpointError: for a directory that orbax's CheckpointManager owns
                (refused before anything is written into it).
            DirectoryLockedError: if another writer holds the lock.
        """

        owner = orbax_steps.owner(self.root)
        if owner is not None:
            raise CheckpointError(
                self.root,
                f"{owner}: inox_io does not write into a directory that another tool owns; "
                "open it with read_only=True to list and restore its steps, or save to a new directory",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(self.root)
        remove_temporaries(self.root)
        return lock

    def is_manager_directory(self) -> bool:
        r"""Whether the directory is a CheckpointManager's: its writer's lock file, or
        complete steps, in it."""

        return self.root.is_dir() and ((self.root / LOCK_FILE).exists() or bool(self.steps()))

    def holds_checkpoint(self) -> bool:
        r"""Whether the directory is a checkpoint (its manifest), not steps."""

        return (self.root / MANIFEST).is_file()

    def step_at(self, path: Path) -> int | None:
        r"""The step, if :py:`path` (in the directory) is a complete step's folder."""

        name = Path(os.path.abspath(path)).name
        return int(name) if STEP_NAME.match(name) and (path / METADATA_FILE).is_file() else None

    def sizes(self, step: int) -> Callable[[str], int]:
        r"""The bytes of a file or folder of the step, by its path in the directory
        (``'5'``, ``'5/model.safetensors'``)."""

        return lambda name: disk_bytes(self.root / name)

    def steps(self) -> List[int]:
        r"""The complete steps, in increasing order, orbax's included."""

        steps = []
        for entry in os.scandir(self.root):
            if STEP_NAME.match(entry.name) and (
                os.path.isfile(os.path.join(entry.path, METADATA_FILE)) or orbax_steps.is_step(Path(entry.path))
            ):
                steps.append(int(entry.name))
        return sorted(steps)

    def metadata(self, step: int) -> Dict[str, Any] | None:
        r"""The step's metadata, or :py:`None` if the step is not complete.

        Raises:
            CheckpointError: if its metadata file is damaged.
        """

        path = self.url(step) / METADATA_FILE
        try:
            return step_file.parse(path.read_bytes(), path, step)
        except FileNotFoundError:
            pass
        if orbax_steps.is_step(self.url(step)):
            return orbax_steps.step_metadata(self.url(step), step)
        return None

    def temporary(self, step: int) -> Path:
        r"""The step's temporary folder, named alike on every process and made by
        process 0."""

        temp = Path(distributed.broadcast("temporary", str(temporary_path(self.url(step)))))
        if distributed.is_primary():
            temp.mkdir()
        return temp

    def staging(self) -> ContextManager[None]:
        r"""Where every process writes its part of a step: the one :meth:`temporary`."""

        return contextlib.nullcontext()

    def discard(self, temp: Path) -> None:
        r"""Removes the step's temporary (process 0, which made it)."""

        if distributed.is_primary():
            shutil.rmtree(temp, ignore_errors=True)

    def commit(self, temp: Path, step: int) -> None:
        r"""Renames the finished step into place, durably (process 0; every process
        calls, after every process wrote its part).

        Raises:
            FileExistsError: if the step appeared meanwhile.
        """

        if not distributed.is_primary():
            return
        final = self.url(step)
        fsync_directory(temp)
        if final.exists():  # os.rename would replace an empty directory
            raise FileExistsError(f"{final} appeared during the save")
        os.rename(temp, final)
        fsync_directory(self.root)

    def delete(self, step: int) -> None:
        r"""Deletes a step: renamed away first, so that a crash while its files are
        removed leaves a temporary, cleaned at the next start, never a step that
        looks complete and is not."""

        trash = temporary_path(self.url(step))
        os.rename(self.url(step), trash)
        fsync_directory(self.root)
        shutil.rmtree(trash, ignore_errors=True)
