r"""Local folders standing for object-store checkpoints: a layout writes into one,
which is then committed to the bucket (:func:`writing`); a checkpoint is fetched into
one to be read (:func:`reading`). For a local path, both give the path itself, so
that callers hold one code path for every location.

Example:
    >>> with reading('ckpt/model.safetensors') as local:
    ...     local
    PosixPath('ckpt/model.safetensors')
"""

from __future__ import annotations

__all__ = ["writing", "reading", "staging_folder"]

import contextlib
import os
import shutil
import tempfile
import warnings

from pathlib import Path
from typing import Callable, Iterator

from . import commit, ranges
from .location import ObjectURL, locate


@contextlib.contextmanager
def staging_folder() -> Iterator[Path]:
    r"""A fresh local folder (under ``TMPDIR``), removed afterwards."""

    folder = Path(tempfile.mkdtemp(prefix="inox_io-stage-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _named(local: Path, url: ObjectURL) -> Iterator[None]:
    r"""Errors raised and warnings given inside name the URL, not the local folder
    standing for it."""

    old, new = os.fspath(local), str(url)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # each once here; the caller's filters decide below
            yield
    except Exception as e:
        e.args = tuple(a.replace(old, new) if isinstance(a, str) else a for a in e.args)
        for name in ("path", "filename"):
            if isinstance(getattr(e, name, None), str):
                setattr(e, name, getattr(e, name).replace(old, new))
        raise
    finally:
        for w in caught:
            warnings.warn_explicit(str(w.message).replace(old, new), w.category, w.filename, w.lineno)


@contextlib.contextmanager
def writing(
    path: str | os.PathLike, *, overwrite: bool, collective: Callable[[Path], bool] = lambda local: False
) -> Iterator[Path]:
    r"""The local path to write the checkpoint of :py:`path` at: :py:`path` itself, or
    for a URL, a path in a staging folder, committed to the bucket when the block
    ends without error (see :mod:`.commit`).

    In a job of several processes, :py:`collective(local)` says whether every process
    writes a part of the checkpoint at :py:`local` (a layout whose arrays may span
    processes): then each process writes into a staging folder of its own
    (:func:`inox_io.distributed.own_folders`), uploads it, and the checkpoint is
    committed once all have (:func:`.together.publish_together`); a failure on any
    process fails the save on every process. Otherwise the process calling alone writes
    the checkpoint, as on a disk.

    Raises:
        FileExistsError: for a URL holding a checkpoint, unless :py:`overwrite`.
    """

    where = locate(path)
    if not isinstance(where, ObjectURL):
        yield where
        return
    if not where.key:
        raise ValueError(f"{where}: no object name; expected {where.scheme}://bucket/path")
    if not overwrite and commit.committed(where) is not None:  # on every process alike
        raise FileExistsError(f"{where} exists; pass overwrite=True to replace it")
    # Here, not at the top: the command line imports this package to parse paths, and
    # its --help must not import JAX.
    import jax

    from .. import distributed
    from .together import publish_together

    with staging_folder() as folder:
        local = folder / where.name
        if jax.process_count() == 1 or not collective(local):
            with _named(local, where):
                yield local
            commit.publish(where, folder, overwrite=overwrite)
            return
        error = None
        try:
            with _named(local, where), distributed.own_folders():
                yield local
        except BaseException as e:  # taken to the agreement: the others must not wait for this one
            error = e
        publish_together(where, folder, overwrite=overwrite, error=error)


@contextlib.contextmanager
def reading(
    path: str | os.PathLike, part: str | None = None, *, in_ranges: Callable[[str], bool] = lambda name: False
) -> Iterator[Path]:
    r"""The local path to read the checkpoint of :py:`path` at: :py:`path` itself, or
    for a URL, the committed files fetched into a staging folder (for a checkpoint
    directory, only the files whose path in it starts with :py:`part`, if given: an
    item of a manager's step and the shards beside it).

    The files whose name :py:`in_ranges` takes (a layout's data files, which its reader
    reads in byte ranges) are fetched only where the reader asks
    (:func:`.ranges.ensure`): each process gets the bytes it reads.

    Raises:
        FileNotFoundError: if no checkpoint is committed at the URL.
    """

    where = locate(path)
    if not isinstance(where, ObjectURL):
        yield where
        return
    with staging_folder() as folder:
        deferred = commit.fetch(where, folder, None if part is None else f"{where.name}/{part}", in_ranges)
        local = folder / where.name
        with _named(local, where), ranges.registered(folder, deferred):
            yield local
