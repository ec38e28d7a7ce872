r"""Committing a checkpoint that every process of a job wrote its part of, each into
a staging folder on its own disk: the commit protocol of :mod:`.commit` with several
writers.

Every process calls :func:`publish_together`, in the same order (it agrees through
:mod:`inox_io.distributed`, never through device collectives):

1. process 0 names a fresh generation, sent to the others;
2. every process uploads the files of its own folder under that generation;
3. all agree: if any process failed (writing its part, or uploading it), every
   process fails, and process 0 deletes the generation; the previous checkpoint stays;
4. process 0 writes the commit record, naming every process's files, then deletes
   the other generations; every process learns whether it did.

No file is written by two processes (their names differ: each layout names a
process's files after it), so the record is the union of what each uploaded.

Example:
    >>> merged([{'ckpt/manifest.json': 2, 'ckpt/shards-00000-of-00002.bin': 8}, {'ckpt/shards-00001-of-00002.bin': 8}])
    {'ckpt/manifest.json': 2, 'ckpt/shards-00000-of-00002.bin': 8, 'ckpt/shards-00001-of-00002.bin': 8}
    >>> merged([{'ckpt/a': 1}, {'ckpt/a': 1}])
    Traceback (most recent call last):
      ...
    ValueError: ckpt/a: staged by processes 0 and 1; each file of a checkpoint has one writer
"""

from __future__ import annotations

__all__ = ["publish_together", "merged"]

from pathlib import Path
from typing import Dict, Sequence

from .. import distributed
from . import commit
from .location import ObjectURL


def merged(everyone: Sequence[Dict[str, int]]) -> Dict[str, int]:
    r"""The files of every process (by process index), in one record's order.

    Raises:
        ValueError: for a file that two processes staged.
    """

    files: Dict[str, int] = {}
    owner: Dict[str, int] = {}
    for process, mine in enumerate(everyone):
        for name, size in mine.items():
            if name in owner:
                raise ValueError(f"{name}: staged by processes {owner[name]} and {process}; each file of a checkpoint has one writer")
            owner[name], files[name] = process, size
    return dict(sorted(files.items()))


def publish_together(url: ObjectURL, folder: Path, *, overwrite: bool, error: BaseException | None = None) -> None:
    r"""Commits at :py:`url` the files that every process staged in its own
    :py:`folder`; called by every process. :py:`error` is this process's failure
    in writing its part (it then uploads nothing, and the save fails everywhere).

    Raises:
        this process's error, or on the other processes a
        :class:`~inox_io.CheckpointError` naming the process that failed and why;
        :class:`FileExistsError` (on process 0) if a checkpoint appeared at :py:`url`
        meanwhile, and not :py:`overwrite`.
    """

    primary = distributed.is_primary()
    # A scope of its own: its names stay in step even where a caller's went astray.
    with distributed.scope(distributed.name("publish")):
        generation = distributed.broadcast("generation", commit.new_generation() if primary else None)
        files: Dict[str, int] = {}
        if error is None:
            try:
                files = commit.upload(url, folder, generation)
            except BaseException as e:  # Ctrl-C too: the others must not wait for this one
                error = e
        try:
            everyone = distributed.agree(url, error, files)  # every upload is done, or none commits
        except BaseException:
            if primary:
                try:
                    commit.discard(url, generation)
                except OSError:
                    pass  # the save's own error says more; the next save removes what is left
            raise
        outcome = None
        if primary:
            try:
                commit.commit_generation(url, generation, merged(everyone), overwrite=overwrite)
            except BaseException as e:
                outcome = e
        distributed.agree(url, outcome)
