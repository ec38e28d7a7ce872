r"""Files of a checkpoint fetched from object storage only where they are read.

A layout that reads its data files in byte ranges (the sharded directory: each
process reads the shards it needs; single files: a head, then the arrays or slices
wanted) declares which files those are; when such a checkpoint is fetched
(:func:`inox_io.storage.reading`), they are left out: created at their size, sparse,
and registered here. The layout's reader then calls :func:`ensure` (or the function
:func:`fetcher` gives) with the byte ranges it is about to read, and only those are
requested, several in flight, from the generation the checkpoint was fetched from.
Anywhere else (a local checkpoint, a file fetched whole), :func:`ensure` does nothing.

Example:
    >>> ensure(Path('ckpt'), {'shards-00000-of-00001.bin': [(0, 10)]})  # a local checkpoint
    >>> fetcher(Path('ckpt')) is None
    True
    >>> blocks([(0, 10), (BLOCK_BYTES - 1, BLOCK_BYTES + 1)])
    [0, 1]
"""

from __future__ import annotations

__all__ = ["BLOCK_BYTES", "DeferredFiles", "FETCHED", "blocks", "ensure", "fetcher", "read_through", "registered", "superseded"]

import contextlib
import itertools
import os
import threading

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Set, Tuple

from ..counting import ByteCounter

#: The unit fetched: ranges are rounded out to whole blocks, the checksummed chunks
#: (``manifest.CHUNK_CRC_BYTES``, not imported: the command line's help reaches this
#: module and must not import JAX), which are read whole when verified.
BLOCK_BYTES = 1 << 20

Spans = Iterable[Tuple[int, int]]


#: The bytes :func:`ensure` fetched in this process.
FETCHED = ByteCounter()


def blocks(spans: Spans) -> List[int]:
    r"""The indices of the :data:`BLOCK_BYTES` blocks that :py:`spans` (begin, end)
    touch, sorted."""

    out: Set[int] = set()
    for begin, end in spans:
        if end > begin:
            out.update(range(begin // BLOCK_BYTES, (end - 1) // BLOCK_BYTES + 1))
    return sorted(out)


class DeferredFiles:
    r"""The files of a fetched checkpoint left for later, and how to fetch their bytes:
    :py:`fetch(name, spans)` writes the bytes of the spans of :py:`name` (a path under
    the checkpoint) into the local file; :py:`objects(folder)` is the tensorstore
    kvstore spec of the objects holding the files under :py:`folder` (relative), where
    each file is one object, else :py:`None`; :py:`current()` says whether they are
    still the checkpoint's (no newer save replaced them)."""

    def __init__(
        self,
        sizes: Mapping[str, int],
        fetch: Callable[[List[Tuple[str, int, int]]], None],
        objects: Callable[[str], Dict[str, Any] | None] = lambda folder: None,
        current: Callable[[], bool] = lambda: True,
    ):
        self.sizes, self.fetch, self.objects, self.current = dict(sizes), fetch, objects, current
        self.done: Dict[str, Set[int]] = {name: set() for name in sizes}
        self.lock = threading.Lock()

    def ensure(self, spans: Mapping[str, Spans]) -> None:
        r"""Fetches the blocks of :py:`spans` (by file) not fetched yet, all at once."""

        with self.lock:
            wanted: List[Tuple[str, int, int]] = []
            for name, ranges in spans.items():
                if name not in self.sizes:
                    continue  # fetched whole
                missing = [b for b in blocks(ranges) if b not in self.done[name]]
                # Consecutive blocks in one request.
                for _, run in itertools.groupby(enumerate(missing), lambda pair: pair[1] - pair[0]):
                    run = [b for _, b in run]
                    begin, end = run[0] * BLOCK_BYTES, min((run[-1] + 1) * BLOCK_BYTES, self.sizes[name])
                    if end > begin:
                        wanted.append((name, begin, end))
            if wanted:
                self.fetch(wanted)
                FETCHED.add(sum(end - begin for _, begin, end in wanted))
            for name, begin, end in wanted:
                self.done[name].update(range(begin // BLOCK_BYTES, (end - 1) // BLOCK_BYTES + 1))


_lock = threading.Lock()
_registry: Dict[str, DeferredFiles] = {}


@contextlib.contextmanager
def registered(folder: Path, files: DeferredFiles) -> Iterator[None]:
    r"""Makes :py:`files` (names relative to the local :py:`folder` a checkpoint was
    fetched into) what :func:`ensure` fetches, for the duration of the block."""

    key = os.fspath(Path(folder).absolute())
    with _lock:
        _registry[key] = files
    try:
        yield
    finally:
        with _lock:
            _registry.pop(key, None)


def _lookup(checkpoint: Path) -> Tuple[Path, DeferredFiles] | None:
    r"""The path of :py:`checkpoint` relative to the fetched checkpoint it lies in, and
    that checkpoint's deferred files; :py:`None` where it lies in none."""

    path = Path(checkpoint).absolute()
    with _lock:
        found = next(((root, _registry[os.fspath(root)]) for root in (path, *path.parents) if os.fspath(root) in _registry), None)
    return None if found is None else (path.relative_to(found[0]), found[1])


def fetcher(checkpoint: Path) -> Callable[[Mapping[str, Spans]], None] | None:
    r"""What fetches byte spans :py:`(begin, end)` of the files of :py:`checkpoint` (a
    folder; by name, relative to it) where it is (or lies in) a fetched checkpoint with
    deferred files; :py:`None` otherwise (nothing to fetch, ever): a reader asks once."""

    found = _lookup(checkpoint)
    if found is None:
        return None
    inside, files = found
    return lambda spans: files.ensure({os.fspath(inside / name): list(s) for name, s in spans.items()})


def superseded(checkpoint: Path) -> bool:
    r"""Whether :py:`checkpoint` lies in a checkpoint fetched from object storage that
    a newer save has replaced since (its objects deleted, or about to be): a reader
    that failed reading them in place asks, to report that rather than damage.

    Example:
        >>> superseded(Path('ckpt'))  # a local checkpoint
        False
    """

    found = _lookup(checkpoint)
    return found is not None and not found[1].current()


def read_through(folder: Path) -> Dict[str, Any] | None:
    r"""For a reader that reads the files of :py:`folder` through tensorstore (orbax's
    arrays), which asks for no byte ranges of its own: the kvstore spec of the objects
    holding them where :py:`folder` lies in a fetched checkpoint and each of its files
    is one object (tensorstore then requests, from the bucket, the bytes it reads);
    otherwise :py:`None`, once every deferred file under :py:`folder` is fetched whole,
    so that a read of the local files finds all their bytes.

    Example:
        >>> read_through(Path('ckpt/arrays')) is None  # a local checkpoint
        True
    """

    found = _lookup(folder)
    if found is None:
        return None
    inside, files = found
    spec = files.objects(os.fspath(inside))
    if spec is None:
        prefix = os.fspath(inside) + "/"
        files.ensure({name: [(0, size)] for name, size in files.sizes.items() if name.startswith(prefix)})
    return spec


def ensure(checkpoint: Path, spans: Mapping[str, Spans]) -> None:
    r"""Makes sure the byte spans :py:`(begin, end)` of the files of :py:`checkpoint`
    (by name, relative to it) are on the local disk: fetches those of a checkpoint
    fetched with deferred files, does nothing otherwise."""

    fetch = fetcher(checkpoint)
    if fetch is not None:
        fetch(spans)
