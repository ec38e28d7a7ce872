r"""What a :class:`~inox_io.CheckpointManager` holds of a step between :meth:`save`
returning and its files being written: each item's manifest and a copy of its arrays
that nothing the caller does later can change.

Example:
    >>> item = snapshot('model', {'w': np.ones(2)}, None)
    >>> item.fmt.name, list(item.arrays)
    ('safetensors', ["['w']"])
    >>> snapshot('data', {'offset': 3}, None).json
    {'offset': 3}
"""

from __future__ import annotations

__all__ = ["Item", "snapshot", "host_array"]

import dataclasses
import jax
import json
import numpy as np

from typing import Any, Dict

from inox.tree import is_array

from ..dtypes import is_key_dtype
from ..formats import Format, format_named
from ..manifest import Manifest, build, is_json
from .metadata import ITEM_NAME

PyTree = Any


def _on_cpu(x: jax.Array) -> bool:
    return all(device.platform == "cpu" for device in x.sharding.device_set)


def _held_shard(data: jax.Array) -> jax.Array:
    r"""One shard, safe from the caller: on CPU, over a view of its buffer (whose
    external reference makes XLA keep the buffer through a donation, as for whole
    arrays below); elsewhere, a copy on its device."""

    if _on_cpu(data):
        return jax.device_put(np.asarray(data), data.sharding.device_set.pop())
    return jax.device_put(data, data.sharding, may_alias=False)


def host_array(x: Any) -> Any:
    r"""The values of an array, on the host, that nothing the caller does later can
    change: in-place writes to a NumPy array, donating a JAX array to a jitted call, or
    deleting it."""

    if isinstance(x, jax.Array):
        if is_key_dtype(x.dtype):
            x = jax.random.key_data(x)  # the manifest keeps the key implementation
        if not x.is_fully_addressable:
            # Cannot be gathered here: each process holds (and its collective layout
            # writes) its own shards, rebuilt into an array of their own that a donation
            # of the caller's array cannot delete.
            return jax.make_array_from_single_device_arrays(
                x.shape, x.sharding, [_held_shard(shard.data) for shard in x.addressable_shards]
            )
        if _on_cpu(x):
            # No copy (1 GiB would block the caller ~0.2 s): a jax.Array is immutable,
            # and the read-only view np.asarray returns holds an external reference to
            # its buffer. While it does, XLA's CPU client runs a jit call that donates
            # the buffer without donating it (on purpose, for such holders), and
            # x.delete() leaves the memory to the view. Sharded arrays are gathered
            # into a fresh buffer instead.
            return np.asarray(x)
        # Not on CPU: the transfer copies anyway, and a view held here (of pinned host
        # memory) would make the caller's next donating jit call fail, as XLA's other
        # clients refuse to donate a buffer with an external reference.
    # NumPy arrays may be mutated in place by the caller.
    return np.array(x, copy=True)


@dataclasses.dataclass
class Item:
    r"""One item of a step: a JSON value, or a format with a manifest and its arrays."""

    name: str
    json: Any = None
    fmt: Format | None = None
    manifest: Manifest | None = None
    arrays: Dict[str, Any] | None = None


def snapshot(name: str, tree: PyTree, item_format: str | None) -> Item:
    r"""Takes the snapshot of an item, in :py:`item_format` (by name) or, by default,
    safetensors, or ``'sharded'`` for an item whose arrays span several processes.

    Raises:
        ValueError: for a name that cannot be a file name.
        TypeError: for an item that could not be restored.
    """

    if type(name) is not str or not ITEM_NAME.match(name):
        raise ValueError(f"item name {name!r}: letters, digits, '_' and '-' expected")
    if is_json(tree):
        return Item(name, json=json.loads(json.dumps(tree)))  # a copy, as saved
    if not any(is_array(leaf) for leaf in jax.tree.leaves(tree)):
        raise TypeError(
            f"item {name!r} holds no arrays and is not JSON (dict, list, str, int, float, bool, "
            f"None): its values could not be restored; found {type(tree).__name__}"
        )

    manifest, arrays = build(tree)
    spanning = any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in arrays.values())
    fmt = format_named(item_format or ("sharded" if spanning else "safetensors"))
    for x in arrays.values():
        if isinstance(x, jax.Array) and x.is_fully_addressable and not is_key_dtype(x.dtype) and not _on_cpu(x):
            x.copy_to_host_async()  # all transfers at once, then one copy each
    return Item(name, fmt=fmt, manifest=manifest, arrays={k: host_array(x) for k, x in arrays.items()})
