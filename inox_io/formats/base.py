r"""The storage interface, and the machinery shared by the single-file formats.

A format writes a manifest and the arrays it describes, and reads arrays back by key,
placed on devices. The single-file formats (safetensors, msgpack) share one layout
idea: a header holding the manifest, then each array's raw bytes at a known offset.
They are written in one streaming pass: each array's bytes go straight from its buffer
to the file, many arrays per ``writev`` call, while a background thread computes the
checksums. They are read back the same way: many arrays per ``preadv`` call, straight
into fresh buffers that become the arrays, checksums computed in the background.
"""

from __future__ import annotations

__all__ = ["Format", "Reader", "Target", "FileReader", "host_bytes", "place", "write_payload_file"]

import abc
import collections
import concurrent.futures
import dataclasses
import jax
import math
import mmap
import numpy as np
import os

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

from ..atomic import MAX_BUFFERS, AtomicFile, advance, pwrite_all, syscalls, write_all, writev_all
from ..dtypes import is_key_dtype
from ..errors import CheckpointError
from ..manifest import ArrayInfo, Manifest

try:  # the same function as zlib's, several times faster (SIMD)
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover
    from zlib import crc32

#: Bytes per write call and per checksum job: large enough that a call's cost is
#: nothing next to its copy, small enough that checksums and writeback overlap the
#: writes finely.
CHUNK_BYTES = 8 * 2**20

#: Bytes per read call: larger, because the kernel reads ahead at most one request (or
#: its readahead window) at a time, and waits for the disk at each new call; 8 MiB
#: requests read a cold file ~15% slower than 64 MiB ones.
READ_CHUNK_BYTES = 64 * 2**20

#: Bytes of small arrays read and placed together: small enough that the kernel's own
#: read-ahead, started by each sequential read, fetches the next run while this one is
#: checked and placed (cold loads of 2,000 small arrays ~15% faster than with 64 MiB;
#: explicit ``posix_fadvise(WILLNEED)`` hints measured slower still).
RUN_BYTES = 8 * 2**20

#: Bytes between two arrays (in files written by other tools) read into a scratch
#: buffer rather than splitting a run of arrays read together.
MAX_GAP_BYTES = 64 * 2**10

#: Whole arrays below this are checksummed in the caller's thread (see
#: :class:`Checksums`; at zlib-ng's ~25 GB/s, 1 MiB takes 40 us).
INLINE_CRC_BYTES = 2**20

#: Alignment of the buffers arrays are read into: JAX on CPU adopts 64-byte aligned
#: host buffers without copying them.
ALIGNMENT = 64

Piece = Tuple[str, memoryview]  #: consecutive bytes of a stored key


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
        if is_key_dtype(x.dtype):
            x = jax.random.key_data(x)
        # One process holds every array whole (a cheaper test, for thousands of arrays).
        if jax.process_count() > 1 and not x.is_fully_addressable:
            raise ValueError(
                "this array spans several processes; save it to a directory (orbax format), "
                "where each process writes its own shards"
            )
    host = np.asarray(x)
    if not host.dtype.isnative:
        host = host.astype(host.dtype.newbyteorder("="))  # files are little-endian
    elif not host.flags.c_contiguous:
        host = np.ascontiguousarray(host)
    return (host if host.ndim == 1 else host.reshape(-1)).view(np.uint8)


class Checksums:
    r"""The CRC-32 of each key, computed while the caller writes or reads the next bytes.

    Pieces go to one background thread, in submission order (:func:`crc32`
    releases the GIL), so that their checksums cost no time next to the I/O. Small
    arrays (below :data:`INLINE_CRC_BYTES`) are checksummed at once, in the caller's
    thread: the caller runs Python code between its system calls (describing arrays,
    placing them with JAX), and a thread checksumming thousands of small arrays would
    wait for the GIL after each one, longer than the checksum takes.

    Example:
        >>> with Checksums() as crcs:
        ...     crcs.submit([('a', memoryview(b'hello ')), ('a', memoryview(b'world'))])
        >>> crcs.hex('a') == f"{crc32(b'hello world'):08x}"
        True
    """

    def __init__(self):
        self.values: Dict[str, int] = {}
        self.threaded: set = set()  # keys whose pieces go to the thread, to keep their order
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inox_io-crc32")
        self.pending: collections.deque = collections.deque()

    def submit(self, pieces: Sequence[Piece]) -> None:
        r"""Adds pieces of bytes, in order, to the checksums of their keys."""

        background = []
        for key, data in pieces:
            if key in self.threaded or len(data) >= INLINE_CRC_BYTES:
                self.values.setdefault(key, 0)
                self.threaded.add(key)
                background.append((key, data))
            else:  # a whole small array: only a large array's first piece is large
                self.values[key] = crc32(data, self.values.get(key, 0))
        if background:
            self.pending.append(self.pool.submit(self.update, background))

    def update(self, pieces: Sequence[Piece]) -> None:
        for key, data in pieces:
            self.values[key] = crc32(data, self.values[key])

    def wait(self, pending: int = 0) -> None:
        r"""Waits until at most :py:`pending` jobs are left (which bounds the buffers
        kept alive for them), and raises their errors."""

        while len(self.pending) > pending:
            self.pending.popleft().result()

    def hex(self, key: str) -> str:
        return f"{self.values[key]:08x}"

    def __enter__(self) -> Checksums:
        return self

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


class Writeback:
    r"""Starts writing each run of a file to disk as soon as it is written, from a
    background thread of its own (starting it may wait for the disk queue), so that
    the final fsync finds little left to do. A hint only: fsync makes the file durable,
    and reports the errors.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.pool = None
        if syscalls.writeback is not None:
            self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inox_io-writeback")

    def start(self, offset: int, size: int) -> None:
        if self.pool is not None:
            self.pool.submit(syscalls.writeback, self.fd, offset, size)

    def __enter__(self) -> Writeback:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # before the file is closed; errors ignored


class Run:
    r"""Consecutive buffers of a file, written or read by one system call, and the
    pieces among them whose checksums are wanted."""

    def __init__(self, offset: int):
        self.offset = offset  #: where in the file the run starts
        self.views: List[Any] = []
        self.pieces: List[Piece] = []
        self.size = 0

    def add(self, view: Any, key: str | None = None) -> None:
        self.views.append(view)
        self.size += len(view)
        if key is not None:
            self.pieces.append((key, view))

    def full(self, limit: int = CHUNK_BYTES) -> bool:
        return self.size >= limit or len(self.views) >= MAX_BUFFERS

    def next(self) -> Run:
        return Run(self.offset + self.size)


def _chunked(view: memoryview, limit: int = CHUNK_BYTES) -> List[memoryview]:
    r"""A buffer in views of at most :py:`limit` bytes (one, even if empty)."""

    if len(view) <= limit:
        return [view]
    return [view[i : i + limit] for i in range(0, len(view), limit)]


PLACEHOLDER_CRC = "0" * 8


def _crc_slots(header: bytes, marker: str, count: int) -> List[int] | None:
    r"""Where the checksums of the manifest's arrays lie in an encoded header, in the
    manifest's order, so that the final header is the placeholder with them patched in
    rather than encoded again (a large share of saving thousands of small arrays).

    Each array's entry holds the marker once, in order; where the marker occurs more
    often (a key or metadata containing it), the slots are unknown: None.

    Example:
        >>> _crc_slots(b'{"a":{"crc32":"00000000"},"b":{"crc32":"00000000"}}', '"crc32":"00000000"', 2)
        [15, 40]
    """

    needle, found, start = marker.encode(), [], 0
    digits = needle.rindex(PLACEHOLDER_CRC.encode())
    while (start := header.find(needle, start)) >= 0:
        found.append(start + digits)
        start += len(needle)
        if len(found) > count:
            return None
    return found if len(found) == count else None


def write_payload_file(
    path: Path,
    manifest: Manifest,
    header: Callable[[Manifest], bytes],
    quote: Callable[[str], str],
    payloads: Sequence[Tuple[bytes, str]],
    arrays: Mapping[str, Any],
    *,
    overwrite: bool,
) -> None:
    r"""Writes ``header | prefix_1 | array_1 | prefix_2 | array_2 ...`` atomically.

    The header is written first with placeholder checksums of fixed width, the arrays
    are streamed, many per ``writev`` call and at most :data:`CHUNK_BYTES` at a time,
    while background threads compute their checksums and start writing them back to
    disk; then the final header, of the same length, is written over the placeholder.

    Arguments:
        header: Encodes the header of a manifest.
        quote: How the header encodes the manifest's JSON text (the safetensors header
            escapes it as a JSON string).
        payloads: ``(prefix, key)`` pairs in file order.
    """

    for key in manifest.arrays:
        manifest.arrays[key].crc32 = PLACEHOLDER_CRC
    placeholder = header(manifest)
    slots = _crc_slots(placeholder, quote(f'"crc32":"{PLACEHOLDER_CRC}"'), len(manifest.arrays))

    with AtomicFile(path, overwrite=overwrite) as f, Checksums() as crcs, Writeback(f.fd) as writeback:

        def flush(run: Run) -> Run:
            writev_all(f.fd, run.views)
            # While the next run is written: this one's checksums and writeback.
            crcs.submit(run.pieces)
            writeback.start(run.offset, run.size)
            crcs.wait(pending=1)  # at most two runs alive (host copies of device arrays)
            return run.next()

        write_all(f.fd, placeholder)
        run = Run(len(placeholder))
        for prefix, key in payloads:
            if prefix:
                run.add(prefix)
            data = host_bytes(arrays[key])
            if data.nbytes != manifest.arrays[key].nbytes:
                raise ValueError(f"{key}: {data.nbytes} bytes, {manifest.arrays[key].nbytes} expected")
            for view in _chunked(memoryview(data)):
                run.add(view, key)
                if run.full():
                    run = flush(run)
            del data  # runs keep what they still need: device arrays' host copies go early
        flush(run)
        crcs.wait()

        for key in manifest.arrays:
            manifest.arrays[key].crc32 = crcs.hex(key)
        if slots is None:
            final = header(manifest)
        else:
            final = bytearray(placeholder)
            for slot, key in zip(slots, manifest.arrays):
                final[slot : slot + 8] = manifest.arrays[key].crc32.encode()
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


def _aligned_empty(nbytes: int) -> np.ndarray:
    r"""A fresh byte buffer starting at an :data:`ALIGNMENT` boundary."""

    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGNMENT  # faster than .ctypes.data
    return raw[start : start + nbytes]


def _preadv_all(fd: int, views: List[memoryview], offset: int) -> int:
    r"""Fills buffers from consecutive bytes of a file, looping over short reads;
    returns the bytes read (fewer only at the end of the file)."""

    total = 0
    while views:
        n = os.preadv(fd, views[:MAX_BUFFERS], offset)
        if n == 0:
            break
        total, offset = total + n, offset + n
        views = advance(views, n)
    return total


class FileReader(Reader):
    r"""Reader of a single-file format: loads read the file with ``preadv`` into fresh
    buffers; :meth:`host` and :meth:`verify` read it through a memory map.

    Loaded arrays never alias the file, so a file overwritten in place (``cp``) or
    truncated later cannot change them, nor crash the process.

    Subclasses parse the header in :py:`parse(buffer)` and return the manifest and the
    byte range of each stored key.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            # Kept open: loads read this very file even if the path is replaced meanwhile.
            self.file = open(self.path, "rb", buffering=0)
            size = os.fstat(self.file.fileno()).st_size
            self.buffer = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            raise
        except OSError as e:
            raise CheckpointError(self.path, f"cannot be read ({e})") from None
        #: The bytes a format stores right before an array (msgpack: its key), checked
        #: whenever the array is read.
        self.prefixes: Dict[str, bytes] = {}
        self.manifest, self.ranges = self.parse(memoryview(self.buffer))
        self.check_ranges()

    @abc.abstractmethod
    def parse(self, buffer: memoryview) -> Tuple[Manifest, Dict[str, Tuple[int, int]]]:
        ...

    def close(self) -> None:
        self.file.close()  # the map stays valid, for host arrays still in use

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

    def check_prefix(self, key: str, found: bytes | memoryview) -> None:
        expected = self.prefixes.get(key, b"")
        if found != expected:
            self.fail(
                f"the {len(expected)} bytes before the array are {bytes(found)[:40]!r}, {expected[:40]!r} expected "
                "(damaged, or not laid out as inox_io writes)",
                key=key,
            )

    def mapped_prefix(self, key: str) -> memoryview:
        begin = self.ranges[key][0]
        return memoryview(self.buffer)[begin - len(self.prefixes.get(key, b"")) : begin]

    def host(self, key: str) -> np.ndarray:
        self.check_prefix(key, self.mapped_prefix(key))
        info = self.manifest.arrays[key]
        begin, end = self.ranges[key]
        dtype = info.storage_dtype
        flat = np.frombuffer(self.buffer, dtype=dtype, count=math.prod(info.storage_shape), offset=begin)
        return flat.reshape(info.storage_shape)

    def checksum(self, key: str) -> str:
        self.check_prefix(key, self.mapped_prefix(key))
        begin, end = self.ranges[key]
        return f"{crc32(memoryview(self.buffer)[begin:end]):08x}"

    def verify(self, keys: Iterable[str] | None = None) -> List[str]:
        problems = []
        for key in self.manifest.arrays if keys is None else keys:
            expected = self.manifest.arrays[key].crc32
            if expected is not None and self.checksum(key) != expected:
                problems.append(f"{self.path}: {key}: checksum mismatch (corrupted data)")
        return problems

    def runs(self, keys: Iterable[str]) -> List[List[str]]:
        r"""Keys in file order, grouped into runs that are read together and placed
        together: at most :data:`RUN_BYTES` (or one larger array), with at most
        :data:`MAX_GAP_BYTES` between two arrays."""

        out: List[List[str]] = []
        size = end = 0
        for key in sorted(keys, key=lambda k: self.ranges[k]):
            begin, stop = self.ranges[key]
            if not out or size + stop - begin > RUN_BYTES or begin - end > MAX_GAP_BYTES:
                out.append([])
                size = 0
            out[-1].append(key)
            size, end = size + stop - begin, max(end, stop)
        return out

    def read(self, keys: List[str], crcs: Checksums | None) -> Dict[str, np.ndarray]:
        r"""Reads a run of arrays (see :meth:`runs`) into fresh aligned buffers, one
        system call per :data:`READ_CHUNK_BYTES`, each chunk's checksum computed while the
        next chunk is read."""

        def flush(run: Run) -> Run:
            if self.fill(run.views, run.offset) < run.size:
                self.fail(f"unexpected end of file before byte {run.offset + run.size} (truncated?)")
            if crcs is not None:
                crcs.submit(run.pieces)
            return run.next()

        hosts: Dict[str, np.ndarray] = {}
        prefixes: List[Tuple[str, memoryview]] = []  # the bytes read before each array
        scratch = None  # receives the bytes between arrays
        run = Run(self.ranges[keys[0]][0] - len(self.prefixes.get(keys[0], b"")))
        for key in keys:
            info = self.manifest.arrays[key]
            begin, end = self.ranges[key]
            prefix = len(self.prefixes.get(key, b""))
            position = run.offset + run.size
            if begin - prefix > position:
                scratch = scratch or memoryview(bytearray(MAX_GAP_BYTES))
                run.add(scratch[: begin - prefix - position])
            elif begin - prefix < position:  # an empty array where the previous one starts
                hosts[key] = np.empty(info.storage_shape, info.storage_dtype)
                if crcs is not None:
                    crcs.submit([(key, memoryview(b""))])
                continue
            if prefix:
                prefixes.append((key, memoryview(bytearray(prefix))))
                run.add(prefixes[-1][1])
            buffer = _aligned_empty(end - begin)
            hosts[key] = buffer.view(info.storage_dtype).reshape(info.storage_shape)
            for view in _chunked(memoryview(buffer), READ_CHUNK_BYTES):
                run.add(view, key)
                if run.full(READ_CHUNK_BYTES):
                    run = flush(run)
        flush(run)
        for key, found in prefixes:
            self.check_prefix(key, found)
        return hosts

    def fill(self, views: List[memoryview], offset: int) -> int:
        r"""Fills buffers from the file's bytes at :py:`offset`; returns the bytes read."""

        if hasattr(os, "preadv"):
            return _preadv_all(self.file.fileno(), views, offset)
        source, total = memoryview(self.buffer), 0  # without preadv: from the memory map
        for view in views:
            n = len(source[offset + total : offset + total + len(view)])
            view[:n] = source[offset + total : offset + total + n]
            total += n
        return total

    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, jax.Array]:
        infos = self.manifest.arrays
        # Arrays that span processes: each process reads only its own slices, from the map.
        spanning = {k for k, t in targets.items() if t.sharding is not None and not t.sharding.is_fully_addressable}
        out: Dict[str, Any] = {}
        with Checksums() as crcs:
            for keys in self.runs(k for k in targets if k not in spanning):
                out.update(place_all(infos, self.read(keys, crcs if verify else None), targets))
        problems = []
        if verify:
            for key in targets:
                expected = infos[key].crc32
                if expected is None:
                    continue
                found = self.checksum(key) if key in spanning else crcs.hex(key)
                if found != expected:
                    problems.append(f"{key}: checksum mismatch (corrupted data)")
        if problems:
            raise CheckpointError(self.path, "; ".join(problems))
        out.update({key: place(infos[key], self.host(key), targets[key]) for key in spanning})
        return out
