r"""The store of a CheckpointManager directory's steps, chosen by its location: a
folder (:class:`~inox_io.manager.disk_steps.DiskSteps`) or a bucket prefix
(:class:`~inox_io.manager.bucket_steps.BucketSteps`). Callers (the manager, the
command line) hold one store and call its methods, never asking which it is.

Example:
    >>> from inox_io.storage import locate
    >>> type(steps_at(locate('s3://bucket/run'))).__name__, type(steps_at(locate('run'))).__name__
    ('BucketSteps', 'DiskSteps')
"""

from __future__ import annotations

__all__ = ["Steps", "steps_at"]

from pathlib import Path
from typing import Union

from ..storage import ObjectURL
from .bucket_steps import BucketSteps
from .disk_steps import DiskSteps

Steps = Union[DiskSteps, BucketSteps]


def steps_at(directory: Path | ObjectURL) -> Steps:
    r"""The store of the steps in :py:`directory` (a located path, see
    :func:`inox_io.storage.locate`)."""

    return BucketSteps(directory) if isinstance(directory, ObjectURL) else DiskSteps(directory)
