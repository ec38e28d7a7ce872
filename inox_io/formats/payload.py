r"""The engine of the single-file layouts (safetensors, msgpack): a header holding the
manifest, then each array's raw bytes at a known offset.

Files are written in one streaming pass: each array's bytes go straight from its
buffer to the file, many arrays per ``writev`` call, while a background thread computes
the checksums. They are read back the same way: many arrays per ``preadv`` call,
straight into fresh buffers that become the arrays, checksums computed in the
background.
"""

from __future__ import annotations

__all__ = ["FileFormat", "FileReader", "SLICE_CHECKS", "aligned_empty", "preadv_all", "write_payload_file"]

import abc
import concurrent.futures
import math
import mmap
import numpy as np
import os

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

from ..atomic import MAX_BUFFERS, AtomicFile, DurableFile, advance, open_regular, pwrite_all, syscalls, write_all, writev_all
from ..counting import ByteCounter
from ..errors import CHECKSUM_MISMATCH, CheckpointError, damage_error, unchecked_error
from ..manifest import Manifest
from ..storage import ranges as fetched
from .boxes import local_boxes, span
from .checksums import Checksums, ChunkedCrc, Piece, crc32
from .interface import Format, Reader, Target
from .transfer import host_bytes, place, place_all

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

#: Alignment of the buffers arrays are read into: JAX on CPU adopts 64-byte aligned
#: host buffers without copying them.
ALIGNMENT = 64

#: The bytes of arrays spanning processes that this process checksummed in loads: the
#: chunks its own slices overlap, where the file has chunk checksums; else whole arrays.
SLICE_CHECKS = ByteCounter()


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
    progress: Callable[[int], None] | None = None,
    in_place: bool = False,
) -> None:
    r"""Writes ``header | prefix_1 | array_1 | prefix_2 | array_2 ...`` atomically
    (:class:`~inox_io.atomic.AtomicFile`), or with :py:`in_place` as a new file of a
    directory committed as a whole (:class:`~inox_io.atomic.DurableFile`).

    The header is written first with placeholder checksums of fixed width, the arrays
    are streamed, many per ``writev`` call and at most :data:`CHUNK_BYTES` at a time,
    while background threads compute their checksums and start writing them back to
    disk; then the final header, of the same length, is written over the placeholder.

    Arguments:
        header: Encodes the header of a manifest.
        quote: How the header encodes the manifest's JSON text (the safetensors header
            escapes it as a JSON string).
        payloads: ``(prefix, key)`` pairs in file order.
        progress: Called with the bytes of arrays written so far, after each write call.
    """

    manifest.no_checksums = None  # every array gets one here
    chunked = []  # arrays larger than a chunk get chunk checksums too
    for key, info in manifest.arrays.items():
        count = info.chunks(manifest.chunk_crc32_bytes)
        info.crc32, info.chunk_crc32 = PLACEHOLDER_CRC, [PLACEHOLDER_CRC] * count if count else None
        if count:
            chunked.append(key)
    placeholder = header(manifest)
    # Patching needs one slot per array: with chunk lists, the header is encoded again
    # (a few large arrays: the many small ones, where encoding costs, have none).
    slots = None if chunked else _crc_slots(placeholder, quote(f'"crc32":"{PLACEHOLDER_CRC}"'), len(manifest.arrays))

    written = 0  # bytes of arrays
    file = DurableFile(path) if in_place else AtomicFile(path, overwrite=overwrite)
    with file as f, Checksums() as crcs, Writeback(f.fd) as writeback:
        for key in chunked:
            crcs.chunked(key, manifest.chunk_crc32_bytes)

        def flush(run: Run) -> Run:
            nonlocal written
            writev_all(f.fd, run.views)
            if progress is not None:
                written += sum(len(view) for _, view in run.pieces)
                progress(written)
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
        for key in chunked:
            manifest.arrays[key].chunk_crc32 = crcs.chunk_hex(key)
        if slots is None:
            final = header(manifest)
        else:
            final = bytearray(placeholder)
            for slot, key in zip(slots, manifest.arrays):
                final[slot : slot + 8] = manifest.arrays[key].crc32.encode()
        if len(final) != len(placeholder):
            raise AssertionError("header length changed while writing")  # checksums have a fixed width
        pwrite_all(f.fd, final, 0)


def aligned_empty(nbytes: int) -> np.ndarray:
    r"""A fresh byte buffer starting at an :data:`ALIGNMENT` boundary."""

    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGNMENT  # faster than .ctypes.data
    return raw[start : start + nbytes]


def preadv_all(fd: int, views: List[memoryview], offset: int) -> int:
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


class FileFormat(Format):
    r"""A single-file layout: read with a :class:`FileReader`, which reads a head, then
    only the arrays (or slices) a load asks for: on object storage, fetched in ranges."""

    def reads_in_ranges(self, name: str) -> bool:
        return name.endswith(self.suffix)


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
        # Kept open: loads read this very file even if the path is replaced meanwhile.
        self.file = os.fdopen(open_regular(self.path), "rb", buffering=0)
        try:
            size = os.fstat(self.file.fileno()).st_size
            self.buffer = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            self.file.close()
            raise CheckpointError(self.path, f"cannot be read ({e})") from None
        #: The bytes a format stores right before an array (msgpack: its key), checked
        #: whenever the array is read.
        self.prefixes: Dict[str, bytes] = {}
        #: Where the file is one of a checkpoint fetched from object storage in ranges,
        #: what fetches the bytes about to be read (see :meth:`need`).
        self.fetch = fetched.fetcher(self.path.parent)
        self.manifest, self.ranges = self.parse(memoryview(self.buffer))
        self.check_ranges()

    @abc.abstractmethod
    def parse(self, buffer: memoryview) -> Tuple[Manifest, Dict[str, Tuple[int, int]]]:
        ...

    def close(self) -> None:
        self.file.close()  # the map stays valid, for host arrays still in use

    def need(self, spans: Iterable[Tuple[int, int]]) -> None:
        r"""Makes sure byte spans :py:`(begin, end)` of the file are here before they are
        read: a file of a checkpoint on object storage is fetched only where it is read
        (:mod:`inox_io.storage.ranges`), every span of a call in one go."""

        if self.fetch is not None:
            self.fetch({self.path.name: spans})

    def stored_span(self, key: str) -> Tuple[int, int]:
        r"""The bytes of an array in the file, with those stored right before it."""

        begin, end = self.ranges[key]
        return begin - len(self.prefixes.get(key, b"")), end

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
        return memoryview(self.buffer)[self.stored_span(key)[0] : self.ranges[key][0]]

    def host(self, key: str) -> np.ndarray:
        self.need([self.stored_span(key)])
        return self.mapped(key)

    def mapped(self, key: str) -> np.ndarray:
        r"""An array as it lies in the memory map, its bytes fetched already."""

        self.check_prefix(key, self.mapped_prefix(key))
        info = self.manifest.arrays[key]
        begin, end = self.ranges[key]
        dtype = info.storage_dtype
        flat = np.frombuffer(self.buffer, dtype=dtype, count=math.prod(info.storage_shape), offset=begin)
        return flat.reshape(info.storage_shape)

    def intact(self, key: str) -> bool:
        r"""Whether an array's stored bytes match its checksum, and its chunk checksums
        (which a load of slices will trust) where it has them."""

        self.need([self.stored_span(key)])
        self.check_prefix(key, self.mapped_prefix(key))
        info = self.manifest.arrays[key]
        begin, end = self.ranges[key]
        data = memoryview(self.buffer)[begin:end]
        if info.chunk_crc32 is None:
            return f"{crc32(data):08x}" == info.crc32
        crcs = ChunkedCrc(self.manifest.chunk_crc32_bytes)
        crcs.add(data)
        return f"{crcs.whole():08x}" == info.crc32 and [f"{c:08x}" for c in crcs.chunks()] == info.chunk_crc32

    def checks_slices(self, key: str, target: Target) -> bool:
        r"""Whether a load onto :py:`target` (spanning processes) verifies only the
        chunks its slices overlap: the file has chunk checksums, and the array is placed
        as stored (a transform takes the whole array)."""

        info = self.manifest.arrays[key]
        return info.chunk_crc32 is not None and (target.transform is None or bool(info.key_impl))

    def slice_spans(self, key: str, target: Target) -> List[Tuple[int, int]]:
        r"""The bytes of an array, from the file's start, that this process's slices of
        :py:`target` lie within: from the first to the last element of each."""

        info = self.manifest.arrays[key]
        whole, itemsize = tuple((0, n) for n in info.storage_shape), info.storage_dtype.itemsize
        begin, out = self.ranges[key][0], []
        for box in local_boxes(target.sharding, info.shape):
            box += whole[len(box) :]  # PRNG keys: the key data's trailing axes, whole
            if all(a < b for a, b in box):
                first, end, _ = span(whole, box)
                out.append((begin + first * itemsize, begin + end * itemsize))
        return out

    def slice_chunks(self, key: str, target: Target) -> List[int]:
        r"""The chunks (by index) that this process's slices of :py:`target` overlap."""

        begin, size = self.ranges[key][0], self.manifest.chunk_crc32_bytes
        wanted = set()
        for first, end in self.slice_spans(key, target):
            wanted.update(range((first - begin) // size, -(-(end - begin) // size)))
        return sorted(wanted)

    def chunk_span(self, key: str, i: int) -> Tuple[int, int]:
        begin, size = self.ranges[key][0], self.manifest.chunk_crc32_bytes
        return begin + i * size, begin + min((i + 1) * size, self.manifest.arrays[key].nbytes)

    def slices_match(self, key: str, target: Target) -> bool:
        r"""Whether the bytes of an array that this process's slices of :py:`target`
        need match their checksums: the chunks those slices overlap where the load
        :meth:`checks_slices`; else the whole array."""

        if not self.checks_slices(key, target):
            SLICE_CHECKS.add(self.manifest.arrays[key].nbytes)
            return self.intact(key)
        self.check_prefix(key, self.mapped_prefix(key))
        expected, data = self.manifest.arrays[key].chunk_crc32, memoryview(self.buffer)
        for i in self.slice_chunks(key, target):
            begin, end = self.chunk_span(key, i)
            SLICE_CHECKS.add(end - begin)
            if f"{crc32(data[begin:end]):08x}" != expected[i]:
                return False
        return True

    def spans_of_load(self, targets: Mapping[str, Target], spanning: Iterable[str], verify: bool) -> List[Tuple[int, int]]:
        r"""Every byte span a load reads, announced at once (:meth:`need`)."""

        out = [self.stored_span(key) for key in targets if key not in spanning]
        for key in spanning:
            target, info = targets[key], self.manifest.arrays[key]
            if (verify and info.crc32 is not None and not self.checks_slices(key, target)) or (
                target.transform is not None and not info.key_impl
            ):
                out.append(self.stored_span(key))  # read whole
                continue
            if verify and info.crc32 is not None:  # the chunks verified hold the slices
                out += [self.chunk_span(key, i) for i in self.slice_chunks(key, target)]
            else:
                out += self.slice_spans(key, target)
        return out

    def verify(self, keys: Iterable[str] | None = None) -> Dict[str, str]:
        keys = list(self.manifest.arrays if keys is None else keys)
        self.need([self.stored_span(key) for key in keys])
        problems = self.manifest.missing_checksums(keys)
        for key in keys:
            if self.manifest.arrays[key].crc32 is not None and not self.intact(key):
                problems[key] = CHECKSUM_MISMATCH
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
            buffer = aligned_empty(end - begin)
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
            return preadv_all(self.file.fileno(), views, offset)
        source, total = memoryview(self.buffer), 0  # without preadv: from the memory map
        for view in views:
            n = len(source[offset + total : offset + total + len(view)])
            view[:n] = source[offset + total : offset + total + n]
            total += n
        return total

    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, Any]:
        infos = self.manifest.arrays
        missing = self.manifest.missing_checksums(targets) if verify else {}
        if missing:
            raise unchecked_error(self.path, list(missing))  # before anything is read
        # Arrays that span processes: each process reads only its own slices, from the map.
        spanning = {k for k, t in targets.items() if t.sharding is not None and not t.sharding.is_fully_addressable}
        self.need(self.spans_of_load(targets, spanning, verify))
        out: Dict[str, Any] = {}
        with Checksums() as crcs:
            for keys in self.runs(k for k in targets if k not in spanning):
                hosts = self.read(keys, crcs if verify else None)
                placed = {key: targets[key].apply(infos[key], hosts.pop(key)) for key in keys}
                out.update(
                    place_all({k: v[0] for k, v in placed.items()}, {k: v[1] for k, v in placed.items()}, targets)
                )
        problems = {}
        if verify:
            for key in targets:
                if infos[key].crc32 is None:
                    continue
                if not (self.slices_match(key, targets[key]) if key in spanning else crcs.hex(key) == infos[key].crc32):
                    problems[key] = CHECKSUM_MISMATCH
        if problems:
            raise damage_error(self.path, problems)
        for key in spanning:
            out[key] = place(*targets[key].apply(infos[key], self.mapped(key)), targets[key])
        return out
