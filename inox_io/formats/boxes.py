r"""Boxes: the part of an array that a shard, a device or a read holds, as
``[start, stop)`` along each axis, and where a box's elements lie in another's C order.
"""

from __future__ import annotations

__all__ = ["Box", "box_of", "distinct_shards", "extents", "intersection", "local_boxes", "span", "strides", "sub_view"]

import functools
import jax
import math
import numpy as np

from typing import Any, Dict, List, Sequence, Tuple

Box = Tuple[Tuple[int, int], ...]  #: [start, stop) along each axis


def box_of(index: Tuple[slice, ...], shape: Sequence[int]) -> Box:
    r"""The box of a JAX index (a tuple of slices) of an array of :py:`shape`.

    Example:
        >>> box_of((slice(None), slice(2, 4)), (3, 8))
        ((0, 3), (2, 4))
    """

    return tuple(s.indices(n)[:2] for s, n in zip(index, shape)) + tuple((0, n) for n in shape[len(index) :])


def extents(box: Box) -> Tuple[int, ...]:
    return tuple(b - a for a, b in box)


def intersection(a: Box, b: Box) -> Box | None:
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))
    return out if all(x0 < x1 for x0, x1 in out) else None


def strides(box: Box) -> List[int]:
    r"""The C-order strides, in elements, of an array of the box's extents."""

    out, step = [], 1
    for n in reversed(extents(box)):
        out.append(step)
        step *= n
    return out[::-1]


def span(outer: Box, inner: Box) -> Tuple[int, int, bool]:
    r"""Where the elements of :py:`inner` lie in :py:`outer`'s C order: the first, one
    past the last, and whether they are all the elements between (contiguous).

    Example:
        >>> span(((0, 4), (0, 8)), ((1, 3), (0, 8))), span(((0, 4), (0, 8)), ((0, 4), (2, 4)))
        ((8, 24, True), (2, 28, False))
    """

    steps = strides(outer)
    first = sum((i0 - o0) * s for (i0, _), (o0, _), s in zip(inner, outer, steps))
    end = 1 + sum((i1 - 1 - o0) * s for (_, i1), (o0, _), s in zip(inner, outer, steps))
    return first, end, end - first == math.prod(extents(inner))


def sub_view(buffer: np.ndarray, outer: Box, inner: Box, itemsize: int, base: int) -> np.ndarray:
    r"""The bytes of :py:`inner` as an array of its extents (plus a trailing axis of the
    item's bytes), in a uint8 buffer holding :py:`outer`'s C-order bytes from byte
    :py:`base` on."""

    first = span(outer, inner)[0] * itemsize - base
    return np.lib.stride_tricks.as_strided(
        buffer[first:],
        shape=extents(inner) + (itemsize,),
        strides=tuple(s * itemsize for s in strides(outer)) + (1,),
        writeable=False,
    )


@functools.lru_cache(maxsize=1024)
def distinct_shards(sharding: jax.sharding.Sharding, shape: Tuple[int, ...]) -> Tuple[Tuple[Box, Tuple[Any, ...]], ...]:
    r"""The distinct boxes of an array's sharding (every device's, of every process),
    each with the devices holding it, in the sharding's order: the same on every
    process."""

    groups: Dict[Box, List[Any]] = {}
    for device, index in sharding.devices_indices_map(shape).items():
        groups.setdefault(box_of(index, shape), []).append(device)
    return tuple((box, tuple(devices)) for box, devices in groups.items())


@functools.lru_cache(maxsize=1024)
def local_boxes(sharding: jax.sharding.Sharding, shape: Tuple[int, ...]) -> Tuple[Box, ...]:
    r"""The distinct boxes of this process's devices in a sharding."""

    return tuple(dict.fromkeys(box_of(i, shape) for i in sharding.addressable_devices_indices_map(shape).values()))
