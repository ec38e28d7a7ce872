r"""Moving arrays between devices and the host: the bytes of an array to store, and
host arrays placed onto devices or shardings.
"""

from __future__ import annotations

__all__ = ["host_bytes", "host_value", "place", "place_all", "device_put_default"]

import jax
import numpy as np

from typing import Any, Dict, List, Mapping

from ..dtypes import is_key_dtype
from ..manifest import ArrayInfo
from .interface import Target


def host_bytes(x: Any) -> np.ndarray:
    r"""Returns the bytes of an array as a flat, contiguous :py:`uint8` host array,
    without copying when the array already lives on the host."""

    if isinstance(x, jax.Array):
        if is_key_dtype(x.dtype):
            x = jax.random.key_data(x)
        # One process holds every array whole (a cheaper test, for thousands of arrays).
        if jax.process_count() > 1 and not x.is_fully_addressable:
            raise ValueError(
                "this array spans several processes; save it to a directory (orbax format), "
                "where each process writes its own shards"
            )
    host = host_value(x) if isinstance(x, jax.Array) else np.asarray(x)
    if not host.dtype.isnative:
        host = host.astype(host.dtype.newbyteorder("="))  # files are little-endian
    elif not host.flags.c_contiguous:
        host = np.ascontiguousarray(host)
    return (host if host.ndim == 1 else host.reshape(-1)).view(np.uint8)


def host_value(x: jax.Array) -> np.ndarray:
    r"""The value of :py:`x` on the host, which JAX does not keep: :func:`numpy.asarray`
    stores on :py:`x` the copy it assembles of an array of several shards (or of one on
    an accelerator), which would hold a second copy of the model for as long as the
    model lives. A shard on a CPU device is viewed, not copied.

    Example:
        >>> host_value(jnp.arange(3.0))
        array([0., 1., 2.], dtype=float32)
    """

    def local(data: jax.Array) -> np.ndarray:
        if next(iter(data.devices())).platform != "cpu":
            data = jax.device_put(data, jax.devices("cpu")[0])  # a copy of our own, viewed
        return np.asarray(data)

    shards = [s for s in x.addressable_shards if s.replica_id == 0]
    whole = next((s for s in shards if s.data.shape == x.shape), None)
    if whole is not None:
        return local(whole.data)
    out = np.empty(x.shape, x.dtype)
    for s in shards:
        out[s.index] = local(s.data)
    return out


def place(info: ArrayInfo, view: np.ndarray, target: Target) -> jax.Array:
    r"""Places a host array (storage dtype and shape) on its target sharding.

    64-bit arrays stay exact NumPy arrays when JAX runs without ``jax_enable_x64``.

    With a sharding, each device reads only its own slice of :py:`view` (for a memory
    map, only the pages of that slice are touched).
    """

    if info.key_impl:
        data = np.asarray(view)  # the keys' data: one more trailing axis than the keys
        if target.sharding is not None and not target.sharding.is_fully_addressable:
            # Across processes, each wraps only the keys of its own shards.
            return jax.make_array_from_callback(
                info.shape, target.sharding, lambda index: jax.random.wrap_key_data(data[index], impl=info.key_impl)
            )
        keys = jax.random.wrap_key_data(data, impl=info.key_impl)
        return jax.device_put(keys, target.sharding) if target.sharding is not None else keys

    if jax.dtypes.canonicalize_dtype(view.dtype) != view.dtype:
        # 64-bit data with jax_enable_x64 off: JAX would silently narrow it.
        if target.sharding is not None:
            raise ValueError(f"{info.dtype} arrays need jax_enable_x64 to be placed on a sharding")
        return np.array(view)

    if target.sharding is None:
        return jax.device_put(view)
    return jax.make_array_from_callback(info.shape, target.sharding, lambda index: view[index])


def _plain(info: ArrayInfo, target: Target) -> bool:
    r"""Whether an array can go through a batched :func:`jax.device_put`: not a key,
    not narrowed by JAX, and placed on this process' devices only."""

    if info.key_impl or jax.dtypes.canonicalize_dtype(info.storage_dtype) != info.storage_dtype:
        return False
    return target.sharding is None or target.sharding.is_fully_addressable


try:  # internal to JAX: see device_put_default
    from jax._src.interpreters.pxla import batched_device_put as _batched_put
except ImportError:  # pragma: no cover
    _batched_put = None


def device_put_default(hosts: List[np.ndarray]) -> List[jax.Array]:
    r"""Does :py:`jax.device_put(hosts)`: each host array onto the default device,
    uncommitted, adopted without a copy where JAX can.

    Through JAX's own batched transfer (``pxla.batched_device_put``, what
    :func:`jax.make_array_from_callback` ends in) when it is there: :func:`jax.device_put`
    spends ~20 us of Python per array before it, which made placing 2,000 small arrays
    take longer than reading them. Internal to JAX, so any failure (a JAX that changed
    it) falls back to :func:`jax.device_put` for good, and a default device set by
    configuration takes the public path too.

    Example:
        >>> x = device_put_default([np.arange(3.0, dtype=np.float32)])[0]
        >>> x, x.committed
        (Array([0., 1., 2.], dtype=float32), False)
    """

    global _batched_put
    if _batched_put is not None and jax.config.jax_default_device is None:
        device = jax.local_devices()[0]
        sharding = jax.sharding.SingleDeviceSharding(device)
        try:
            out = [
                _batched_put(jax.core.ShapedArray(x.shape, x.dtype), sharding, [x], [device], committed=False)
                for x in hosts
            ]
            if all(isinstance(y, jax.Array) and not y.committed for y in out[:1]):
                return out
        except Exception:
            pass
        _batched_put = None
    return jax.device_put(hosts)


def place_all(
    infos: Mapping[str, ArrayInfo], hosts: Mapping[str, np.ndarray], targets: Mapping[str, Target]
) -> Dict[str, Any]:
    r"""Places host arrays on their targets like :func:`place`, the plain ones with one
    :func:`jax.device_put` for the default device and one for shardings: a call per
    array costs more than placing a small array."""

    out = {key: place(infos[key], hosts[key], targets[key]) for key in hosts if not _plain(infos[key], targets[key])}
    default = [key for key in hosts if key not in out and targets[key].sharding is None]
    sharded = [key for key in hosts if key not in out and targets[key].sharding is not None]
    if default:
        out.update(zip(default, device_put_default([hosts[key] for key in default])))
    if sharded:
        values = jax.device_put([hosts[key] for key in sharded], [targets[key].sharding for key in sharded])
        out.update(zip(sharded, values))
    return out
