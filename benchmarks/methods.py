r"""The ways of saving and loading that are compared, behind one small interface.

Every save is fsynced before it returns (orbax's as it ships: its files are written
by TensorStore, with that driver's default durability); every load returns arrays that
are ready (blocked on).
"""

from __future__ import annotations

__all__ = ["Method", "all_names", "methods", "sharding_for"]

import jax
import numpy as np
import os

from pathlib import Path
from typing import Any, Callable, Dict, List

import inox_io

from .cases import Data

IOV_MAX = 1024  # iovecs per writev call (the Linux limit)


def sharding_for(mesh: jax.sharding.Mesh) -> Callable[[Any], jax.sharding.Sharding]:
    r"""Splits each array along its first axis divisible by the device count, or
    replicates it if there is none."""

    count = mesh.devices.size

    def choose(leaf: Any) -> jax.sharding.Sharding:
        spec = [None] * len(leaf.shape)
        for axis, n in enumerate(leaf.shape):
            if n % count == 0:
                spec[axis] = "x"
                break
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

    return choose


def _ready(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def _host_bytes(x: Any) -> np.ndarray:
    return np.asarray(x).reshape(-1).view(np.uint8)  # a view: no copy for CPU arrays


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _aligned_empty(nbytes: int, alignment: int = 64) -> np.ndarray:
    r"""A fresh byte buffer whose start is aligned, so that JAX on CPU can adopt views
    of it without copying."""

    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + nbytes]


class Method:
    r"""One way of saving and loading.

    Arguments:
        name: Its name in the table.
        suffix: The checkpoint's file name suffix ('' for a directory).
    """

    name: str = ""
    suffix: str = ""
    sharded: bool = False  #: whether it can load onto shardings

    def save(self, path: Path, data: Data) -> None:
        raise NotImplementedError

    def load(self, path: Path, like: Data, sharding: Callable[[Any], Any] | None = None) -> Any:
        raise NotImplementedError


class Raw(Method):
    r"""The physical baseline: the unique arrays' bytes, written back to back to one
    file with as few system calls as possible (``writev``) and fsynced; read back
    with one ``readinto`` into one fresh buffer and placed without copying."""

    name, suffix, sharded = "raw", ".bin", True

    def save(self, path: Path, data: Data) -> None:
        views = [memoryview(_host_bytes(x)) for x in data.unique]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            pending = views
            while pending:
                written = os.writev(fd, pending[:IOV_MAX])
                done = 0  # the buffers written whole; a short write leaves a partial one
                while done < len(pending) and written >= len(pending[done]):
                    written -= len(pending[done])
                    done += 1
                pending = pending[done:]
                if written:
                    pending[0] = pending[0][written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self, path: Path, like: Data, sharding: Callable[[Any], Any] | None = None) -> Any:
        sizes = [int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in like.unique]
        buffer = _aligned_empty(sum(sizes))
        with open(path, "rb", buffering=0) as f:
            view, done = memoryview(buffer), 0
            while done < len(buffer):
                n = f.readinto(view[done:])
                if not n:
                    raise EOFError(path)
                done += n
        hosts, offset = [], 0
        for x, size in zip(like.unique, sizes):
            hosts.append(buffer[offset : offset + size].view(x.dtype).reshape(x.shape))
            offset += size
        if sharding is None:
            return _ready(jax.device_put(hosts))
        return _ready(jax.device_put(hosts, [sharding(x) for x in like.unique]))


class InoxIO(Method):
    r"""inox_io in one of its formats."""

    sharded = True

    def __init__(self, fmt_name: str, suffix: str):
        self.name, self.suffix = f"inox_io-{fmt_name}", suffix
        # A format of several files beside each other (a sharded index and its shards)
        # gets a folder of its own, so that they are measured and removed together.
        self.file_name = f"model{suffix}" if "." in suffix[1:] else None
        if self.file_name:
            self.suffix = ""

    def target(self, path: Path, create: bool = False) -> Path:
        if self.file_name is None:
            return path
        if create:
            path.mkdir()
        return path / self.file_name

    def save(self, path: Path, data: Data) -> None:
        inox_io.save(self.target(path, create=True), data.tree)

    def load(self, path: Path, like: Data, sharding: Callable[[Any], Any] | None = None) -> Any:
        path = self.target(path)
        if sharding is None:
            return _ready(jax.tree.leaves(inox_io.load(path, like.tree)))
        tree = inox_io.load(path, like.tree, shardings=lambda position, leaf: sharding(leaf))
        return _ready(jax.tree.leaves(tree))


class InoxIONamed(Method):
    r"""A file as Hugging Face writes it (PyTorch names, no inox_io manifest, each tied
    array once), written by ``safetensors.flax.save_file``; loaded by inox_io with
    ``names=inox_io.torch_names``: the named route, against the keyed one of
    ``inox_io-safetensors`` on the same bytes."""

    name, suffix, sharded = "inox_io-named", ".safetensors", True

    def save(self, path: Path, data: Data) -> None:
        from safetensors.flax import save_file

        import inox.tree

        _, arrays = inox.tree.partition(data.tree)  # each tied array once, at its first path
        save_file({inox_io.torch_names(k): v for k, v in arrays.items()}, str(path), metadata={"format": "pt"})
        _fsync(path)

    def load(self, path: Path, like: Data, sharding: Callable[[Any], Any] | None = None) -> Any:
        options: Dict[str, Any] = {"names": inox_io.torch_names}
        if sharding is not None:
            options["shardings"] = lambda position, leaf: sharding(leaf)
        return _ready(jax.tree.leaves(inox_io.load(path, like.tree, **options)))


class Orbax(Method):
    r"""orbax's ``StandardCheckpointer``: save (then wait until finished) and restore
    with abstract targets. The tie is written twice."""

    name, suffix, sharded = "orbax", "", True

    def __init__(self):
        import orbax.checkpoint as ocp

        self.checkpointer = ocp.StandardCheckpointer()

    def save(self, path: Path, data: Data) -> None:
        self.checkpointer.save(path.absolute(), data.flat)
        self.checkpointer.wait_until_finished()

    def load(self, path: Path, like: Data, sharding: Callable[[Any], Any] | None = None) -> Any:
        default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        targets = {
            k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding(x) if sharding else default)
            for k, x in like.flat.items()
        }
        return _ready(self.checkpointer.restore(path.absolute(), targets))


class Safetensors(Method):
    r"""``safetensors.flax``: ``save_file`` then fsync; ``load_file`` then
    ``jnp.asarray``. The tie is written twice."""

    name, suffix = "safetensors", ".safetensors"

    def save(self, path: Path, data: Data) -> None:
        from safetensors.flax import save_file

        save_file(data.flat, str(path))
        _fsync(path)

    def load(self, path: Path, like: Data, sharding: Callable[[Any], Any] | None = None) -> Any:
        from safetensors.flax import load_file

        return _ready({k: jax.numpy.asarray(v) for k, v in load_file(str(path)).items()})


class Npy(Method):
    r"""The equinox way without pickle: ``np.save`` of each leaf, in order, into one
    file, then fsync; ``np.load`` of each leaf then ``jnp.asarray``. The tie is written
    twice."""

    name, suffix = "npy-leaves", ".npy"

    def save(self, path: Path, data: Data) -> None:
        with open(path, "xb") as f:
            for x in data.flat.values():
                np.save(f, np.asarray(x), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())

    def load(self, path: Path, like: Data, sharding: Callable[[Any], Any] | None = None) -> Any:
        out = []
        with open(path, "rb") as f:
            for x in like.flat.values():
                host = np.load(f, allow_pickle=False)
                if host.dtype != x.dtype:  # bfloat16 is stored as raw 2-byte items
                    host = host.view(x.dtype)
                out.append(jax.numpy.asarray(host))
        return _ready(out)


def inox_formats() -> Dict[str, str]:
    r"""inox_io's registered formats and the suffix that selects each."""

    from inox_io.formats import FORMATS, format_for
    from inox_io.formats.hf_index import INDEX_SUFFIX

    out = {}
    for fmt in FORMATS:
        for suffix in (f".{fmt.name}", "", INDEX_SUFFIX):
            candidate = Path("/nonexistent") / f"ckpt{suffix}"
            if fmt.matches(candidate) and format_for(candidate) is fmt:
                out[fmt.name] = suffix
                break
    return out


def all_names() -> List[str]:
    r"""The names of all methods, in table order."""

    inox = [f"inox_io-{n}" for n in inox_formats()]
    return ["raw", *inox, "inox_io-named", "orbax", "safetensors", "npy-leaves"]


def methods(names: List[str]) -> List[Method]:
    r"""The methods of these names, in the order of :func:`all_names`."""

    formats = inox_formats()
    out: List[Method] = []
    for name in all_names():
        if name not in names:
            continue
        if name == "raw":
            out.append(Raw())
        elif name == "inox_io-named":
            out.append(InoxIONamed())
        elif name.startswith("inox_io-"):
            fmt = name[len("inox_io-") :]
            out.append(InoxIO(fmt, formats[fmt]))
        elif name == "orbax":
            out.append(Orbax())
        elif name == "safetensors":
            out.append(Safetensors())
        elif name == "npy-leaves":
            out.append(Npy())
    return out
