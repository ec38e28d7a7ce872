r"""The arrays of an orbax checkpoint folder, read through tensorstore a chunk at a
time into the buffers the load returns.

Orbax's own restore reads each array (or shard) whole into a buffer of tensorstore's,
then copies it into the array it returns: twice the array at the peak. Here each
chunk is decoded on its own and copied into the output as it arrives, a few chunks in
flight, so that a load holds the arrays it returns plus a working set of a few chunks
(inox_io's own saves write chunks of at most :data:`CHUNK_BYTES`; a folder written
with larger chunks, by orbax itself, needs one chunk of working set per chunk in
flight). Nothing is cached across reads.

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

__all__ = ["CHUNK_BYTES", "CHUNKS_IN_FLIGHT", "OrbaxArrays", "chunk_boxes"]

import ctypes
import itertools
import jax
import json
import math
import numpy as np

from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

from ..atomic import read_regular
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
        # No cache: a decoded chunk is dropped once copied out. A few chunks decoded at once.
        self.context = ts.Context(
            {"cache_pool": {"total_bytes_limit": 0}, "data_copy_concurrency": {"limit": CHUNKS_IN_FLIGHT}}
        )
        self.stores: Dict[str, Any] = {}

    def spec(self, name: str) -> Dict[str, Any]:
        r"""The tensorstore spec of the array :py:`name`, as orbax lays it out."""

        if self.ocdbt:
            kvstore = {"driver": "ocdbt", "base": f"file://{self.folder}/", "path": f"{name}/"}
        else:
            kvstore = {"driver": "file", "path": f"{self.folder / name}/"}
        return {"driver": self.driver, "kvstore": kvstore}

    def open(self, name: str) -> Any:
        r"""The tensorstore of the array :py:`name` (opened once)."""

        import tensorstore as ts

        if name not in self.stores:
            self.stores[name] = ts.open(self.spec(name), open=True, read=True, context=self.context).result()
        return self.stores[name]

    def read(self, name: str, sharding: jax.sharding.Sharding | None) -> Any:
        r"""The array :py:`name`: a host array without :py:`sharding`, else a
        :class:`jax.Array` on it, each distinct shard of this process read once."""

        store = self.open(name)
        shape, dtype = tuple(store.shape), store.dtype.numpy_dtype
        if sharding is None:
            return self.read_box(store, tuple(slice(0, n) for n in shape), dtype)
        shards: Dict[Tuple[Tuple[int, int], ...], np.ndarray] = {}

        def shard(index: Box) -> np.ndarray:
            bounds = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
            if bounds not in shards:  # replicas of a shard on this process's devices
                shards[bounds] = self.read_box(store, tuple(slice(*b) for b in bounds), dtype)
            return shards[bounds]

        return jax.make_array_from_callback(shape, sharding, shard)

    def read_box(self, store: Any, box: Box, dtype: np.dtype) -> np.ndarray:
        r"""The part :py:`box` of :py:`store`, in an aligned buffer (which JAX adopts
        without a copy), which tensorstore fills chunk by chunk, :data:`CHUNKS_IN_FLIGHT`
        at once."""

        import tensorstore as ts

        shape = tuple(s.stop - s.start for s in box)
        out = aligned_empty(math.prod(shape) * dtype.itemsize).view(dtype).reshape(shape)
        into = ts.array(out, copy=False, write=True)  # decoded chunks land in `out` directly
        chunk = tuple(store.chunk_layout.read_chunk.shape or ())  # None for a scalar
        pending: deque = deque()
        for part in chunk_boxes(box, chunk):
            if len(pending) == CHUNKS_IN_FLIGHT:
                pending.popleft().result()
                release_freed_memory()
            local = tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(part, box))
            pending.append(into[local].write(store[part]))
        while pending:
            pending.popleft().result()
        release_freed_memory()
        return out


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
