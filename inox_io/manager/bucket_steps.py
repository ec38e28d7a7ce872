r"""The steps of a :class:`~inox_io.CheckpointManager` whose directory is a bucket
prefix (``gs://bucket/run``, ``s3://bucket/run``): each step is one checkpoint
directory on object storage, committed as :mod:`inox_io.storage.commit` commits any
(its files under a fresh generation, then its commit record ``run/<step>``), so a
step is listed once complete, and is deleted record first.

A bucket has no lock: one writing manager per prefix, which the caller ensures. The
writer's start removes the leftovers of killed saves (generations no record names).

In a job of several processes, each writes its part of a step into a local folder of
its own (:meth:`BucketSteps.staging`), uploads it, and process 0 commits the step once
every process has (:func:`inox_io.storage.together.publish_together`).

Example:
    >>> from inox_io.storage import locate
    >>> BucketSteps(locate('s3://bucket/run')).url(7)
    ObjectURL(scheme='s3', bucket='bucket', key='run/7')
"""

from __future__ import annotations

__all__ = ["BucketSteps"]

import shutil
import tempfile

from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List

from .. import distributed
from ..errors import CheckpointError
from ..storage import ObjectURL, commit, reading
from ..storage.together import publish_together
from . import metadata as step_file
from .metadata import METADATA_FILE, STEP_NAME


class BucketSteps:
    r"""Lists, reads, commits and deletes the steps under a bucket prefix, with the
    methods of :class:`~inox_io.manager.disk_steps.DiskSteps`."""

    def __init__(self, root: ObjectURL):
        self.root = root

    def url(self, step: int) -> ObjectURL:
        return self.root / str(step)

    def exists(self) -> bool:
        return True  # a prefix: there is no folder to create

    def start_writer(self) -> None:
        r"""Removes leftovers of killed saves (process 0 only). There is no lock on a
        bucket: one writing manager per prefix."""

        for name in commit.leftovers(self.root):
            commit.clean(self.root / name)

    def is_manager_directory(self) -> bool:
        r"""Whether the prefix holds a CheckpointManager's steps (no lock file in a
        bucket: its steps' records)."""

        return bool(self.steps())

    def holds_checkpoint(self) -> bool:
        r"""Whether a checkpoint is committed at the prefix itself, not steps."""

        try:
            return bool(self.root.key) and commit.committed(self.root) is not None
        except CheckpointError:
            return False  # an object that is not a record: not a checkpoint either

    def step_at(self, url: ObjectURL) -> int | None:
        r"""The step, if :py:`url` (under the prefix) is a complete step."""

        return int(url.name) if STEP_NAME.match(url.name) and int(url.name) in self.steps() else None

    def sizes(self, step: int) -> Callable[[str], int]:
        r"""The bytes of a file or folder of the step, by its path under the prefix
        (``'5'``, ``'5/model.safetensors'``): the sizes its commit record lists.

        Raises:
            FileNotFoundError: if the step is not committed.
        """

        record = commit.committed(self.url(step))
        if record is None:
            raise FileNotFoundError(f"{self.url(step)}: no complete step {step}")
        return lambda item: sum(n for name, n in record.files.items() if name == item or name.startswith(item + "/"))

    def steps(self) -> List[int]:
        r"""The committed steps, in increasing order."""

        return sorted(int(name) for name in commit.children(self.root) if STEP_NAME.match(name))

    def metadata(self, step: int) -> Dict[str, Any] | None:
        r"""The step's metadata, or :py:`None` if the step is not committed.

        Raises:
            CheckpointError: if its metadata file is damaged.
        """

        try:
            with reading(self.url(step), part=METADATA_FILE) as folder:
                return step_file.parse((folder / METADATA_FILE).read_bytes(), self.url(step) / METADATA_FILE, step)
        except FileNotFoundError:
            return None

    def temporary(self, step: int) -> Path:
        r"""A new local folder to write this process's part of the step in, named as
        the step (each process has its own)."""

        temp = Path(tempfile.mkdtemp(prefix=f"inox_io-step-{step}-")) / str(step)
        temp.mkdir()
        return temp

    def staging(self) -> ContextManager[None]:
        r"""Where every process writes its part of a step: its own :meth:`temporary`."""

        return distributed.own_folders()

    def discard(self, temp: Path) -> None:
        r"""Removes this process's :py:`temp`."""

        shutil.rmtree(temp.parent, ignore_errors=True)

    def commit(self, temp: Path, step: int) -> None:
        r"""Commits the step, every process calling with the :py:`temp` (by
        :meth:`temporary`) it wrote its part in, then removes :py:`temp`.

        Raises:
            CheckpointError: if another process failed to upload its part.
        """

        try:
            publish_together(self.url(step), temp.parent, overwrite=False)
        finally:
            self.discard(temp)

    def delete(self, step: int) -> None:
        commit.remove(self.url(step))
