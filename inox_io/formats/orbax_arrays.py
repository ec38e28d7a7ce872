r"""The arrays of an orbax checkpoint folder, read through tensorstore a chunk at a
time into the buffers the load returns.

Orbax's own restore reads each array (or shard) whole into a buffer of tensorstore's,
then copies it into the array it returns: twice the array at the peak. Here each
chunk is decoded on its own, straight into the buffer returned, a few in flight, so
that a load holds the arrays it returns plus a working set of a few chunks (inox_io's
own saves write chunks of at most :data:`CHUNK_BYTES`; a folder written with larger
chunks, by orbax itself, needs one such chunk per chunk in flight). No chunk is
cached; OCDBT's index is, or every array would read it again. A folder fetched from
object storage is read in its bucket, tensorstore requesting the bytes of the chunks
read (:func:`~inox_io.storage.ranges.read_through`).

The folder's layout (OCDBT or one folder per array; zarr v2 or v3) is orbax's own
record of it, its ``_METADATA``.

Example:
    >>> import orbax.checkpoint as ocp, tempfile
    >>> folder = Path(tempfile.mkdtemp()) / 'arrays'
    >>> with ocp.StandardCheckpointer() as checkpointer:
    ...     checkpointer.save(folder, {'w': np.arange(6.0).reshape(2, 3)})
    >>> arrays = OrbaxArrays(folder)
    >>> arrays.read('w', None)
    array([[0., 1., 2.],
           [3., 4., 5.]])
"""

from __future__ import annotations

__all__ = ["CHUNK_BYTES", "CHUNKS_IN_FLIGHT", "OrbaxArrays", "bounds", "chunk_boxes"]

import ctypes
import itertools
import jax
import json
import math
import numpy as np

from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Tuple

from ..atomic import read_regular
from ..storage.ranges import read_through
from .payload import aligned_empty

#: The most bytes of one chunk inox_io's orbax-layout saves write (orbax's
#: ``chunk_byte_size``): the unit of a load's working set.
CHUNK_BYTES = 8 * 2**20

#: Chunks read at once: enough to keep tensorstore's decoding busy, few enough that the
#: working set stays a few :data:`CHUNK_BYTES`.
CHUNKS_IN_FLIGHT = 2

#: The most bytes of orbax's ``_METADATA`` this reads.
MAX_METADATA_BYTES = 64 * 2**20

Box = Tuple[slice, ...]
Bounds = Tuple[Tuple[int, int], ...]


def chunk_boxes(box: Box, chunk: Tuple[int, ...]) -> Iterator[Box]:
    r"""The parts of :py:`box` (slices with starts and stops) cut along the chunk grid.

    Example:
        >>> [tuple((s.start, s.stop) for s in b) for b in chunk_boxes((slice(1, 5), slice(0, 2)), (2, 2))]
        [((1, 2), (0, 2)), ((2, 4), (0, 2)), ((4, 5), (0, 2))]
    """

    def cuts(s: slice, size: int) -> list:
        edges = [s.start, *range((s.start // size + 1) * size, s.stop, size), s.stop]
        return [slice(a, b) for a, b in zip(edges, edges[1:])]

    yield from itertools.product(*(cuts(s, c) for s, c in zip(box, chunk)))


class OrbaxArrays:
    r"""The arrays of one orbax checkpoint folder (an item, or inox_io's ``arrays/``),
    by name, read through tensorstore."""

    def __init__(self, folder: Path):
        import tensorstore as ts

        self.folder = Path(folder).absolute()
        text, _ = read_regular(self.folder / "_METADATA", MAX_METADATA_BYTES)
        recorded = json.loads(text)
        self.ocdbt = bool(recorded.get("use_ocdbt", True))
        self.driver = "zarr3" if recorded.get("use_zarr3", False) else "zarr"
        # No cache of chunks: a decoded chunk is dropped once copied out. OCDBT's index
        # (small) is cached, or every array would read it again. A few chunks decoded at once.
        self.context = ts.Context(
            {
                "cache_pool": {"total_bytes_limit": 0},
                "cache_pool#index": {"total_bytes_limit": 64 * 2**20},
                "data_copy_concurrency": {"limit": CHUNKS_IN_FLIGHT},
            }
        )
        self.stores: Dict[str, Any] = {}
        # Fetched from object storage: its objects, read where they are (each process
        # requesting the bytes it reads), or None for local files.
        self.objects = read_through(self.folder)

    def spec(self, name: str) -> Dict[str, Any]:
        r"""The tensorstore spec of the array :py:`name`, as orbax lays it out.

        A missing chunk is an error, not zeros: orbax writes every chunk, those equal
        to the fill value included, so one missing is damage (or a newer save's
        removal of the objects being read)."""

        base = {"driver": "file", "path": f"{self.folder}/"} if self.objects is None else self.objects
        if self.ocdbt:
            kvstore = {"driver": "ocdbt", "base": base, "path": f"{name}/", "cache_pool": "cache_pool#index"}
            if self.objects is not None:
                # Reads of nearby chunks of a data file merged into one request: many
                # small arrays would otherwise cost as many round trips.
                kvstore.update(experimental_read_coalescing_threshold_bytes=2**20, experimental_read_coalescing_merged_bytes=16 * 2**20, experimental_read_coalescing_interval="5ms")
        else:
            kvstore = {**base, "path": f"{base['path']}{name}/"}
        return {"driver": self.driver, "kvstore": kvstore, "fill_missing_data_reads": False}

    def open(self, name: str) -> Any:
        r"""The tensorstore of the array :py:`name` (opened once)."""

        return self.open_all([name])[name]

    def open_all(self, names: Iterable[str]) -> Dict[str, Any]:
        r"""The tensorstores of the arrays :py:`names`, opened together (once each)."""

        import tensorstore as ts

        opening = {n: ts.open(self.spec(n), open=True, read=True, context=self.context) for n in dict.fromkeys(names) if n not in self.stores}
        for name, future in opening.items():
            self.stores[name] = future.result()
        return {name: self.stores[name] for name in names}

    def read(self, name: str, sharding: jax.sharding.Sharding | None) -> Any:
        r"""The array :py:`name` (see :meth:`read_all`)."""

        return self.read_all({name: sharding})[name]

    def read_all(self, wanted: Mapping[str, jax.sharding.Sharding | None]) -> Dict[str, Any]:
        r"""The arrays of :py:`wanted`, by name: a host array where the sharding is
        :py:`None`, else a :class:`jax.Array` on it, each distinct shard of this process
        read once, into an aligned buffer (which JAX adopts without a copy).

        Tensorstore decodes the chunks straight into those buffers, the chunks of every
        array in one stream, at most :data:`CHUNKS_IN_FLIGHT` x :data:`CHUNK_BYTES` of
        them in flight (many small arrays at once, one large chunk at a time).
        """

        import tensorstore as ts

        stores = self.open_all(wanted)
        buffers: Dict[str, Dict[Bounds, np.ndarray]] = {}
        parts = []  # (bytes, destination, source)
        for name, sharding in wanted.items():
            store = stores[name]
            shape, dtype = tuple(store.shape), store.dtype.numpy_dtype
            if sharding is None:
                boxes = [tuple((0, n) for n in shape)]
            else:  # each distinct shard once: replicas on this process's devices share it
                indices = sharding.addressable_devices_indices_map(shape).values()
                boxes = list(dict.fromkeys(bounds(index, shape) for index in indices))
            chunk = tuple(store.chunk_layout.read_chunk.shape or ())  # None for a scalar
            buffers[name] = {}
            for box in boxes:
                extent = tuple(b - a for a, b in box)
                out = aligned_empty(math.prod(extent) * dtype.itemsize).view(dtype).reshape(extent)
                buffers[name][box] = out
                into = ts.array(out, copy=False, write=True)  # decoded chunks land in `out`
                for part in chunk_boxes(tuple(slice(*b) for b in box), chunk):
                    local = tuple(slice(p.start - a, p.stop - a) for p, (a, _) in zip(part, box))
                    size = math.prod(p.stop - p.start for p in part) * dtype.itemsize
                    parts.append((size, into[local], store[part]))

        budget, held, landed = CHUNKS_IN_FLIGHT * CHUNK_BYTES, 0, 0
        pending: deque = deque()
        for size, into, source in parts:
            while pending and held + size > budget:
                done, future = pending.popleft()
                future.result()
                held, landed = held - done, landed + done
                if landed >= CHUNK_BYTES:
                    release_freed_memory()
                    landed = 0
            pending.append((size, into.write(source)))
            held += size
        while pending:
            pending.popleft()[1].result()
        release_freed_memory()

        out: Dict[str, Any] = {}
        for name, sharding in wanted.items():
            shape = tuple(stores[name].shape)
            if sharding is None:
                (out[name],) = buffers[name].values()
            else:
                mine = buffers[name]
                out[name] = jax.make_array_from_callback(shape, sharding, lambda index, mine=mine, shape=shape: mine[bounds(index, shape)])
        return out


def bounds(index: Tuple[slice, ...], shape: Tuple[int, ...]) -> Bounds:
    r"""The :py:`(start, stop)` of each dimension of a shard's index.

    Example:
        >>> bounds((slice(None), slice(2, 4)), (3, 8))
        ((0, 3), (2, 4))
    """

    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to ask


MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    r"""Hands the heap's free pages back to the system (glibc's ``malloc_trim``):
    tensorstore's decoding threads free a chunk's buffers in their own heaps, which
    glibc would otherwise keep, growing the process by a chunk or two per thread."""

    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
