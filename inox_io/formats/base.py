r"""The storage interface, and the machinery shared by the single-file formats.

A format writes a manifest and the arrays it describes, and reads arrays back by key,
placed on devices. The single-file formats (safetensors, msgpack) share one layout
idea: a header holding the manifest, then each array's raw bytes at a known offset.
They are written in one streaming pass (each array's bytes go straight from its buffer
to the file while its checksum is computed) and read through a memory map.
"""

from __future__ import annotations

__all__ = ["Format", "Reader", "Target", "FileReader", "host_bytes", "place", "write_payload_file"]

import abc
import dataclasses
import jax
import math
import mmap
import numpy as np
import os
import zlib

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

from ..atomic import AtomicFile, pwrite_all, write_all
from ..errors import CheckpointError
from ..manifest import ArrayInfo, Manifest


@dataclasses.dataclass(frozen=True)
class Target:
    r"""Where a stored array goes: the sharding to place it on (:py:`None` for the
    default device)."""

    sharding: jax.sharding.Sharding | None = None


class Reader(abc.ABC):
    r"""An open checkpoint."""

    path: Path
    manifest: Manifest

    @abc.abstractmethod
    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, jax.Array]:
        r"""Reads the arrays of :py:`targets` (stored keys) onto their shardings."""

    @abc.abstractmethod
    def verify(self, keys: Iterable[str] | None = None) -> List[str]:
        r"""Checks the stored bytes against the manifest; returns the problems found."""

    @abc.abstractmethod
    def host(self, key: str) -> np.ndarray:
        r"""Returns the stored array of :py:`key` on the host, in storage dtype/shape."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Format(abc.ABC):
    r"""A storage format: recognizes its paths, writes and opens checkpoints."""

    name: str

    @abc.abstractmethod
    def matches(self, path: Path) -> bool:
        r"""Whether :py:`path` (existing or not) is in this format."""

    @abc.abstractmethod
    def write(self, path: Path, manifest: Manifest, arrays: Mapping[str, Any], *, overwrite: bool) -> None:
        r"""Writes the arrays under their keys with the manifest, atomically.

        Fills in the checksums of :py:`manifest`.
        """

    @abc.abstractmethod
    def open(self, path: Path) -> Reader:
        r"""Opens a checkpoint for reading.

        Raises:
            CheckpointError: if the file is malformed.
        """


def host_bytes(x: Any) -> np.ndarray:
    r"""Returns the bytes of an array as a flat, contiguous :py:`uint8` host array,
    without copying when the array already lives on the host."""

    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:
            raise ValueError(
                "this array spans several processes; save it to a directory (orbax format), "
                "where each process writes its own shards"
            )
    host = np.ascontiguousarray(np.asarray(x))
    return host.reshape(-1).view(np.uint8)


def write_payload_file(
    path: Path,
    manifest: Manifest,
    header: Callable[[Manifest], bytes],
    payloads: Sequence[Tuple[bytes, str]],
    arrays: Mapping[str, Any],
    *,
    overwrite: bool,
) -> None:
    r"""Writes ``header | prefix_1 | array_1 | prefix_2 | array_2 ...`` atomically.

    The header is written first with placeholder checksums of fixed width, the arrays
    are streamed while their checksums are computed, and the final header, of the same
    length, is written over the placeholder.

    Arguments:
        payloads: ``(prefix, key)`` pairs in file order.
    """

    for key in manifest.arrays:
        manifest.arrays[key].crc32 = "0" * 8
    placeholder = header(manifest)

    with AtomicFile(path, overwrite=overwrite) as f:
        write_all(f.fd, placeholder)
        for prefix, key in payloads:
            if prefix:
                write_all(f.fd, prefix)
            data = host_bytes(arrays[key])
            if data.nbytes != manifest.arrays[key].nbytes:
                raise ValueError(f"{key}: {data.nbytes} bytes, {manifest.arrays[key].nbytes} expected")
            manifest.arrays[key].crc32 = f"{zlib.crc32(data):08x}"
            write_all(f.fd, data)
            del data  # one array at a time on the host (matters for device arrays)
        final = header(manifest)
        if len(final) != len(placeholder):
            raise AssertionError("header length changed while writing")  # checksums have a fixed width
        pwrite_all(f.fd, final, 0)


def place(info: ArrayInfo, view: np.ndarray, target: Target) -> jax.Array:
    r"""Places a host array (storage dtype and shape) on its target sharding.

    64-bit arrays stay exact NumPy arrays when JAX runs without ``jax_enable_x64``.

    With a sharding, each device reads only its own slice of :py:`view` (for a memory
    map, only the pages of that slice are touched).
    """

    if info.key_impl:
        keys = jax.random.wrap_key_data(np.asarray(view), impl=info.key_impl)
        return jax.device_put(keys, target.sharding) if target.sharding is not None else keys

    if jax.dtypes.canonicalize_dtype(view.dtype) != view.dtype:
        # 64-bit data with jax_enable_x64 off: JAX would silently narrow it.
        if target.sharding is not None:
            raise ValueError(f"{info.dtype} arrays need jax_enable_x64 to be placed on a sharding")
        return np.array(view)

    if target.sharding is None:
        return jax.device_put(view)
    return jax.make_array_from_callback(info.shape, target.sharding, lambda index: view[index])


class FileReader(Reader):
    r"""Reader of a single-file format over a read-only memory map.

    Subclasses parse the header in :py:`parse(buffer)` and return the manifest and the
    byte range of each stored key.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                self.buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            raise
        except OSError as e:
            raise CheckpointError(self.path, f"cannot be read ({e})") from None
        self.manifest, self.ranges = self.parse(memoryview(self.buffer))
        self.check_ranges()

    @abc.abstractmethod
    def parse(self, buffer: memoryview) -> Tuple[Manifest, Dict[str, Tuple[int, int]]]:
        ...

    def fail(self, message: str, key: str | None = None):
        raise CheckpointError(self.path, message, key=key)

    def check_ranges(self) -> None:
        size = len(self.buffer)
        spans = []
        for key, info in self.manifest.arrays.items():
            if key not in self.ranges:
                self.fail("listed in the manifest but not stored", key=key)
            begin, end = self.ranges[key]
            if not 0 <= begin <= end <= size:
                self.fail(f"bytes [{begin}, {end}) lie outside the file ({size} bytes; truncated?)", key=key)
            if end - begin != info.nbytes:
                self.fail(f"{end - begin} bytes stored, {info.nbytes} expected", key=key)
            spans.append((begin, end, key))
        spans.sort()
        for (_, end, key), (begin, _, other) in zip(spans, spans[1:]):
            if begin < end:
                self.fail(f"bytes overlap those of {other}", key=key)

    def host(self, key: str) -> np.ndarray:
        info = self.manifest.arrays[key]
        begin, end = self.ranges[key]
        dtype = info.storage_dtype
        flat = np.frombuffer(self.buffer, dtype=dtype, count=math.prod(info.storage_shape), offset=begin)
        return flat.reshape(info.storage_shape)

    def checksum(self, key: str) -> str:
        begin, end = self.ranges[key]
        return f"{zlib.crc32(memoryview(self.buffer)[begin:end]):08x}"

    def verify(self, keys: Iterable[str] | None = None) -> List[str]:
        problems = []
        for key in self.manifest.arrays if keys is None else keys:
            expected = self.manifest.arrays[key].crc32
            if expected is not None and self.checksum(key) != expected:
                problems.append(f"{self.path}: {key}: checksum mismatch (corrupted data)")
        return problems

    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, jax.Array]:
        if verify:
            problems = self.verify(targets)
            if problems:
                raise CheckpointError(self.path, "; ".join(p.split(": ", 1)[1] for p in problems))
        return {key: place(self.manifest.arrays[key], self.host(key), target) for key, target in targets.items()}
