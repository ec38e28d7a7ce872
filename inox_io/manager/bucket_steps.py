r"""The steps of a :class:`~inox_io.CheckpointManager` whose directory is a bucket
prefix (``gs://bucket/run``, ``s3://bucket/run``): each step is one checkpoint
directory on object storage, committed as :mod:`inox_io.storage.commit` commits any
(its files under a fresh generation, then its commit record ``run/<step>``), so a
step is listed once complete, and is deleted record first.

A bucket has no lock: one writing manager per prefix, which the caller ensures. The
writer's start removes the leftovers of killed saves (generations no record names).

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
from typing import Any, Dict, List

from ..storage import ObjectURL, commit, one_process, reading
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
        r"""Refuses jobs of several processes; removes leftovers of killed saves.
        There is no lock on a bucket: one writing manager per prefix."""

        one_process(self.root)
        for name in commit.leftovers(self.root):
            commit.clean(self.root / name)

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
        r"""A new local folder to write the step in, named as the step."""

        temp = Path(tempfile.mkdtemp(prefix=f"inox_io-step-{step}-")) / str(step)
        temp.mkdir()
        return temp

    def discard(self, temp: Path) -> None:
        shutil.rmtree(temp.parent, ignore_errors=True)

    def commit(self, temp: Path, step: int) -> None:
        r"""Commits the step written in :py:`temp` (by :meth:`temporary`), then
        removes :py:`temp`."""

        try:
            commit.publish(self.url(step), temp.parent, overwrite=False)
        finally:
            self.discard(temp)

    def delete(self, step: int) -> None:
        commit.remove(self.url(step))
