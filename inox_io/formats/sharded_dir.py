r"""The sharded directory layout: each process writes the shards it owns into one raw
data file, and process 0 writes the manifest, with where every shard lies, last.

.. code-block:: text

    <directory>/
        manifest.json                     the v1 manifest, plus "layout", "chunk_bytes"
                                          and "shards" (written last)
        shards-00000-of-00002.bin         process 0's shards, back to back
        shards-00001-of-00002.bin         process 1's shards

Each distinct shard of an array is written once, by one of the processes holding a
replica of it (the least loaded so far, so that replicated arrays spread over the
processes), with the fast writer of the single files
(:func:`inox_io.formats.payload.write_payload_file`). Each shard has a CRC-32 per
:data:`CHUNK_BYTES` chunk, computed by the process that wrote it. Loads read, on each
process, only the chunks that the shards of its own devices overlap, straight into the
buffers that become the arrays where the layouts agree, and verify every chunk they
read. The layout is specified in ``docs/format.md`` (section "Sharded directory
format").

Example:
    >>> import os, tempfile
    >>> path = tempfile.mkdtemp() + '/ckpt'
    >>> _ = inox_io.save(path, {'w': jnp.arange(3.0)})
    >>> sorted(os.listdir(path))
    ['manifest.json', 'shards-00000-of-00001.bin']
    >>> inox_io.formats.format_for(path).name, inox_io.inspect(path).arrays["['w']"].crc32
    ('sharded', '30c8bc70')
    >>> before = READS.value
    >>> inox_io.load(path, {'w': jnp.zeros(3)})
    {'w': Array([0., 1., 2.], dtype=float32)}
    >>> READS.value - before  # bytes read from data files
    12
"""

from __future__ import annotations

__all__ = ["ShardedDirectoryFormat", "ShardedReader", "READS", "CHUNK_BYTES", "LAYOUT"]

import collections.abc
import dataclasses
import functools
import jax
import json
import math
import numpy as np
import os
import re
import threading

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

from ..atomic import MAX_BUFFERS, MAX_REPLACEMENTS, again_if_replaced, open_regular, read_regular, replaced
from ..counting import ByteCounter
from ..errors import CHECKSUM_MISMATCH, CheckpointError, damage_error
from ..manifest import CHUNK_CRC_BYTES, MAX_MANIFEST_BYTES, ArrayInfo, Manifest, no_duplicate_keys
from ..storage import ranges
from .boxes import Box, box_of, distinct_shards, extents, intersection, local_boxes, span, sub_view
from .checksums import Checksums, crc32_combine
from .interface import Format, Reader, Target
from .directory_commit import MANIFEST, save_directory
from .payload import READ_CHUNK_BYTES, aligned_empty, preadv_all, write_payload_file
from .transfer import host_bytes, place_all

#: The value of the manifest's ``layout`` field in this layout (absent: orbax's).
LAYOUT = "sharded"

#: Bytes per checksum inside a shard, the same as the chunk checksums of arrays stored
#: whole: a load verifies whole chunks, so it reads at most one chunk more at each end
#: of the bytes it needs from a shard.
CHUNK_BYTES = CHUNK_CRC_BYTES

#: The most shards one array may have in a manifest (checking that they tile the array
#: compares them pairwise).
MAX_SHARDS = 2**14

FILE_NAME = re.compile(r"shards-(\d{5})-of-(\d{5})\.bin")
HEX = re.compile(r"[0-9a-f]{8}")


def file_name(process: int, count: int) -> str:
    return f"shards-{process:05d}-of-{count:05d}.bin"


#: The bytes this process read from data files of this layout (loads, verify, host).
READS = ByteCounter()


# ---------------------------------------------------------------------------------------
# Writing


@dataclasses.dataclass
class Piece:
    r"""A shard this process writes: its box, and how to get its bytes."""

    key: str
    box: Box
    nbytes: int
    data: Callable[[], np.ndarray]


def is_global(x: Any) -> bool:
    r"""Whether an array's shards say who holds what: a :class:`jax.Array`, unless it is
    one process's own array in a job of several (then every process is taken to hold
    the same values, as orbax does, and one of them writes it)."""

    return isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable)


def plan(manifest: Manifest, arrays: Mapping[str, Any]) -> List[Piece]:
    r"""The shards this process writes. Every process computes the whole plan, from
    what every process can see (the manifest and the shardings), so that they agree
    without talking: each distinct shard goes to the least loaded process holding it."""

    processes, me = jax.process_count(), jax.process_index()
    load = [0] * processes
    mine: List[Piece] = []

    def assign(candidates: Iterable[int], nbytes: int) -> int:
        owner = min(candidates, key=lambda p: (load[p], p))
        load[owner] += nbytes
        return owner

    for key, info in manifest.arrays.items():
        if math.prod(info.storage_shape) == 0:
            continue  # the manifest alone describes it
        x = arrays[key]
        whole = tuple((0, n) for n in info.storage_shape)
        itemsize = info.storage_dtype.itemsize
        if not is_global(x):
            if assign(range(processes), info.nbytes) == me:
                mine.append(Piece(key, whole, info.nbytes, functools.partial(host_bytes, x)))
            continue
        if info.key_impl:
            x = jax.random.key_data(x)
        groups = distinct_shards(x.sharding, info.storage_shape)
        if len(groups) == 1 and x.is_fully_addressable:
            if assign([me], info.nbytes) == me:
                mine.append(Piece(key, whole, info.nbytes, functools.partial(host_bytes, x)))
            continue
        local = None
        for box, devices in groups:
            nbytes = math.prod(extents(box)) * itemsize
            owner = assign(sorted({d.process_index for d in devices}), nbytes)
            if owner != me:
                continue
            if local is None:
                local = {shard.device: shard for shard in x.addressable_shards}
            writer = next(d for d in devices if d in local)
            mine.append(Piece(key, box, nbytes, functools.partial(host_bytes, local[writer].data)))
    return mine


class ChunkSource(collections.abc.Mapping):
    r"""The chunks of the pieces, by chunk id, for the payload writer: one piece's host
    bytes at a time (the writer asks for the chunks in order), so that a save holds
    host copies of one shard beyond the writer's own runs."""

    def __init__(self, pieces: Sequence[Piece], where: Dict[str, Tuple[int, int, int]]):
        self.pieces, self.where = pieces, where
        self.current: Tuple[int, np.ndarray | None] = (-1, None)

    def __getitem__(self, cid: str) -> np.ndarray:
        piece, start, stop = self.where[cid]
        if self.current[0] != piece:
            data = self.pieces[piece].data()
            if data.nbytes != self.pieces[piece].nbytes:
                raise ValueError(f"{self.pieces[piece].key}: {data.nbytes} bytes, {self.pieces[piece].nbytes} expected")
            self.current = (piece, data)
        return self.current[1][start:stop]

    def __iter__(self):
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)


def write_pieces(path: Path, pieces: Sequence[Piece], progress: Callable[[int], None] | None = None) -> List[Dict[str, Any]]:
    r"""Writes the pieces back to back into a new data file of a directory committed as
    a whole, durably, and returns their shard entries (without ``file``);
    :py:`progress` is called with the bytes written so far."""

    chunks: Dict[str, ArrayInfo] = {}
    where: Dict[str, Tuple[int, int, int]] = {}
    for i, piece in enumerate(pieces):
        for start in range(0, piece.nbytes, CHUNK_BYTES):
            stop = min(start + CHUNK_BYTES, piece.nbytes)
            cid = str(len(chunks))
            chunks[cid] = ArrayInfo("uint8", (stop - start,), stop - start)
            where[cid] = (i, start, stop)
    index = Manifest(chunks)
    write_payload_file(
        path, index, lambda m: b"", lambda text: text, [(b"", cid) for cid in chunks], ChunkSource(pieces, where),
        overwrite=False, progress=progress, in_place=True,
    )  # fmt: skip
    entries, offset, cids = [], 0, iter(chunks)
    for piece in pieces:
        count = -(-piece.nbytes // CHUNK_BYTES)
        crcs = [index.arrays[next(cids)].crc32 for _ in range(count)]
        entries.append({"offset": offset, "nbytes": piece.nbytes, "index": [list(r) for r in piece.box], "crc32": crcs})
        offset += piece.nbytes
    return entries


def whole_crc(info: ArrayInfo, shards: Sequence[Dict[str, Any]]) -> str | None:
    r"""The CRC-32 of a whole array (what the file layouts record), from its shards'
    chunk checksums, where the shards are consecutive runs of its C-order bytes (split
    along the first axis); else None."""

    if crc32_combine is None:
        return None
    shape, itemsize = info.storage_shape, info.storage_dtype.itemsize
    whole, rows, row_bytes = tuple((0, n) for n in shape), [[0, n] for n in shape[1:]], math.prod(shape[1:]) * itemsize
    runs = []
    for shard in shards:
        box = shard["index"]
        if box[1:] == rows:  # whole rows, the usual split: no need to walk the box
            runs.append((box[0][0] * row_bytes if box else 0, shard))
            continue
        first, end, contiguous = span(whole, tuple(map(tuple, box)))
        if not contiguous:
            return None
        runs.append((first * itemsize, shard))
    value, position = 0, 0
    for start, shard in sorted(runs, key=lambda r: r[0]):
        if start != position:
            return None
        for i, crc in enumerate(shard["crc32"]):
            value = crc32_combine(value, int(crc, 16), min(CHUNK_BYTES, shard["nbytes"] - i * CHUNK_BYTES))
        position += shard["nbytes"]
    return f"{value:08x}" if position == info.nbytes else None


#: How the manifests of this layout begin: a save over a directory learns its layout
#: from these bytes, without parsing a manifest that lists every shard.
SIGNATURE = json.dumps({"layout": LAYOUT}, separators=(",", ":"))[:-1]


def manifest_text(manifest: Manifest, shards: Mapping[str, List[Dict[str, Any]]]) -> str:
    r"""The manifest's JSON: this layout's name and chunk size first (:data:`SIGNATURE`),
    then the v1 fields, then the shards.

    Example:
        >>> manifest_text(Manifest({}), {})[:40]
        '{"layout":"sharded","chunk_bytes":104857'
    """

    head = json.dumps({"layout": LAYOUT, "chunk_bytes": CHUNK_BYTES}, separators=(",", ":"))
    tail = json.dumps({"shards": shards}, separators=(",", ":"))
    return head[:-1] + "," + manifest.to_json()[1:-1] + "," + tail[1:]  # three JSON objects' members, joined


class ShardedDirectoryFormat(Format):
    r"""Directories: new ones, and existing ones whose manifest says this layout."""

    name, suffix, description = "sharded", "", "sharded checkpoint directories"
    collective = True

    def reads_in_ranges(self, name: str) -> bool:
        return FILE_NAME.fullmatch(name) is not None

    def matches(self, path: Path) -> bool:
        if not path.is_dir():
            return path.suffix == ""
        if not (path / MANIFEST).is_file():
            return True  # nothing there yet (an empty directory): a new save's target
        return layout_of(path) == LAYOUT

    def write(
        self,
        path: Path,
        manifest: Manifest,
        arrays: Mapping[str, Any],
        *,
        overwrite: bool,
        extra: Mapping[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        # No place for extra metadata: the manifest holds what it repeats.
        path = Path(path).absolute()
        name = file_name(jax.process_index(), jax.process_count())

        def write(temp: Path, pieces: List[Piece]) -> List[Tuple[str, Dict[str, Any]]]:
            if not pieces:
                return []
            written = write_pieces(temp / name, pieces, progress)  # fsynced; its name with the directory
            return [(p.key, {"file": name, **e}) for p, e in zip(pieces, written)]

        def manifest_of(everyone: Sequence[List[Tuple[str, Dict[str, Any]]]]) -> str:
            shards: Dict[str, List[Dict[str, Any]]] = {key: [] for key in manifest.arrays}
            for process in everyone:
                for key, entry in process:
                    shards[key].append(entry)
            for key, info in manifest.arrays.items():
                shards[key].sort(key=lambda e: e["index"])
                info.crc32 = whole_crc(info, shards[key]) if shards[key] else f"{0:08x}"  # no bytes
            return manifest_text(manifest, shards)

        crcs = save_directory(
            path, overwrite, prepare=lambda: plan(manifest, arrays), write=write, manifest=manifest_of,
            result=lambda: [info.crc32 for info in manifest.arrays.values()],
        )  # fmt: skip
        # Committed: every process returns the manifest written.
        for info, crc in zip(manifest.arrays.values(), crcs):
            info.crc32 = crc

    def open(self, path: Path) -> ShardedReader:
        return ShardedReader(path)


# ---------------------------------------------------------------------------------------
# Reading


_cache_lock = threading.Lock()
_cache: Dict[Path, Tuple[Tuple[int, ...], bytes, Any]] = {}


def read_manifest(path: Path, dir_fd: int | None = None) -> Tuple[bytes, Any]:
    r"""The text of a directory's manifest and its JSON value (None if it is not valid
    JSON), parsed once per version of the file: telling the layout (:func:`layout_of`)
    and opening the directory share the parse. With :py:`dir_fd`, the manifest of
    that open directory (:py:`path` names it in messages).

    Raises:
        CheckpointError: if the manifest is missing, not a regular file or too large.
    """

    try:
        if dir_fd is None:
            text, st = read_regular(path / MANIFEST, MAX_MANIFEST_BYTES)
        else:
            text, st = read_regular(MANIFEST, MAX_MANIFEST_BYTES, dir_fd=dir_fd)
    except FileNotFoundError:
        raise CheckpointError(path, f"no {MANIFEST}: not an inox_io checkpoint, or an unfinished save") from None
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(path)
    if cached is not None and cached[0] == version and cached[1] == text:
        return text, cached[2]
    try:
        data = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except (ValueError, RecursionError):
        data = None  # Manifest.from_json says what is wrong
    with _cache_lock:
        _cache.clear()  # one entry: the directory being opened
        _cache[path] = (version, text, data)
    return text, data


def layout_of(path: Path) -> str | None:
    r"""The layout a directory's manifest names (None: the orbax layout, or no valid
    manifest). A manifest that begins with this layout's :data:`SIGNATURE` is not parsed
    here (a reader parses it whole, and refuses a duplicate ``layout``)."""

    try:
        text, _ = read_regular(path / MANIFEST, MAX_MANIFEST_BYTES)
        if text.startswith(SIGNATURE.encode()):
            return LAYOUT
        data = read_manifest(path)[1]
    except (CheckpointError, OSError):
        return None
    return data.get("layout") if isinstance(data, dict) else None


@dataclasses.dataclass(frozen=True)
class Shard:
    r"""One stored shard: where its bytes lie and its chunks' checksums."""

    file: str
    offset: int
    nbytes: int
    box: Box
    crcs: Tuple[str, ...]


def is_int(x: Any) -> bool:
    return type(x) is int


def parse_shards(path: Path, manifest: Manifest, data: Dict[str, Any]) -> Tuple[int, Dict[str, List[Shard]]]:
    r"""This layout's fields of the manifest, checked (section "Sharded directory
    format" of ``docs/format.md``)."""

    def fail(message: str, key: str | None = None):
        raise CheckpointError(path, f"{MANIFEST}: {message}", key=key)

    if data.get("layout") != LAYOUT:
        fail(f"layout {data.get('layout')!r}, {LAYOUT!r} expected")
    chunk = data.get("chunk_bytes")
    if not is_int(chunk) or chunk < 1:
        fail(f"chunk_bytes {chunk!r}: a positive integer expected")
    stored = data.get("shards")
    if not isinstance(stored, dict):
        fail("a 'shards' object expected")
    for key in stored:
        if key not in manifest.arrays:
            fail("has shards but is not listed in 'arrays'", key=key)
    out: Dict[str, List[Shard]] = {}
    for key, info in manifest.arrays.items():
        entries = stored.get(key)
        if not isinstance(entries, list):
            fail("no list of shards", key=key)
        if len(entries) > MAX_SHARDS:
            fail(f"{len(entries)} shards, more than the {MAX_SHARDS} allowed", key=key)
        shape, itemsize = info.storage_shape, info.storage_dtype.itemsize
        shards = []
        for entry in entries:
            if not isinstance(entry, dict):
                fail(f"shard {entry!r:.80}: an object expected", key=key)
            name, offset, nbytes, index, crcs = (entry.get(f) for f in ("file", "offset", "nbytes", "index", "crc32"))
            if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
                fail(f"shard file {name!r:.80}: a name shards-NNNNN-of-NNNNN.bin expected", key=key)
            if not (is_int(offset) and offset >= 0 and is_int(nbytes) and nbytes >= 0):
                fail(f"shard in {name}: offset and nbytes must be non-negative integers", key=key)
            if (
                not isinstance(index, list)
                or len(index) != len(shape)
                or not all(isinstance(r, list) and len(r) == 2 and all(map(is_int, r)) and 0 <= r[0] < r[1] <= n for r, n in zip(index, shape))
            ):
                fail(f"shard in {name}: index {index!r:.80} is not a [start, stop] per axis inside {list(shape)}", key=key)
            box = tuple((a, b) for a, b in index)
            if nbytes != math.prod(extents(box)) * itemsize:
                fail(f"shard in {name}: nbytes {nbytes}, {math.prod(extents(box)) * itemsize} expected for index {index}", key=key)
            if not isinstance(crcs, list) or len(crcs) != -(-nbytes // chunk) or not all(isinstance(c, str) and HEX.fullmatch(c) for c in crcs):
                fail(f"shard in {name}: crc32 must list one checksum (8 lowercase hexadecimal digits) per chunk", key=key)
            shards.append(Shard(name, offset, nbytes, box, tuple(crcs)))
        check_tiling(path, key, shape, shards)
        out[key] = shards
    return chunk, out


def check_tiling(path: Path, key: str, shape: Tuple[int, ...], shards: List[Shard]) -> None:
    r"""Refuses shards that overlap or leave elements out."""

    if sum(math.prod(extents(s.box)) for s in shards) != math.prod(shape):
        raise CheckpointError(path, f"{MANIFEST}: the shards do not cover the array {list(shape)} exactly", key=key)
    ordered = sorted(shards, key=lambda s: s.box)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if a.box and b.box[0][0] >= a.box[0][1]:
                break  # sorted by first axis: no later shard reaches back into this one
            if intersection(a.box, b.box) is not None or not a.box:
                raise CheckpointError(path, f"{MANIFEST}: shards {list(a.box)} and {list(b.box)} overlap", key=key)


@dataclasses.dataclass
class Read:
    r"""Bytes :py:`begin` to :py:`begin + len(view)` of a shard, into :py:`view`."""

    key: str
    shard: Shard
    begin: int
    view: memoryview


class Plan:
    r"""The reads of one load: byte ranges of shards, each going either straight into
    the buffer of a target box (where the box takes the shard's bytes as they lie) or
    into a scratch buffer, then copied into the boxes that need them. With
    verification, the ranges are whole chunks, each checked once per load."""

    def __init__(self, reader: ShardedReader, verify: bool):
        # The files opened before any read is planned: opening them may find the
        # checkpoint replaced, and then reads follow the new manifest's shards.
        reader.files()
        self.reader, self.verify = reader, verify
        self.direct: List[Read] = []
        #: (key, shard, begin, stop) -> the (target, inner box, buffer) it fills
        self.copies: Dict[Tuple[str, Shard, int, int], List[Tuple[Box, Box, np.ndarray]]] = {}
        self.expected: Dict[str, Tuple[str, str, str]] = {}  # chunk id -> key, file, crc32

    def box(self, key: str, target: Box) -> np.ndarray:
        r"""Plans the reads of a box of an array; returns the buffer its bytes will fill."""

        itemsize = self.reader.manifest.arrays[key].storage_dtype.itemsize
        chunk = self.reader.chunk
        dest = aligned_empty(math.prod(extents(target)) * itemsize)
        for shard in self.reader.overlapping(key, target):
            inner = shard.box if shard.box == target else intersection(shard.box, target)
            first, end, contiguous = span(shard.box, inner)
            begin, stop = first * itemsize, end * itemsize
            if self.verify:
                begin, stop = begin - begin % chunk, min(-(-stop // chunk) * chunk, shard.nbytes)
            at, _, fits = span(target, inner)
            if contiguous and fits and (begin, stop) == (first * itemsize, end * itemsize):
                view = memoryview(dest)[at * itemsize : at * itemsize + stop - begin]
                for start in range(0, len(view), READ_CHUNK_BYTES):  # checksummed while the next is read
                    self.direct.append(Read(key, shard, begin + start, view[start : start + READ_CHUNK_BYTES]))
            else:
                self.copies.setdefault((key, shard, begin, stop), []).append((target, inner, dest))
        return dest

    def chunks(self, read: Read) -> List[Tuple[str, memoryview]]:
        r"""The chunks of a read to verify: those not verified yet in this load."""

        if not self.verify:
            return []
        out, chunk, shard = [], self.reader.chunk, read.shard
        for start in range(read.begin, read.begin + len(read.view), chunk):
            cid = f"{shard.file}:{shard.offset + start}"
            if cid not in self.expected:
                self.expected[cid] = (read.key, shard.file, shard.crcs[start // chunk])
                out.append((cid, read.view[start - read.begin : start - read.begin + chunk]))
        return out

    def run(self) -> Dict[str, str]:
        r"""Reads everything planned, consecutive ranges of a file with one ``preadv``;
        returns the problem of each array whose chunks do not have their checksums.

        Raises:
            CheckpointError: for a data file that ends too soon.
        """

        # Every byte range planned, announced at once: fetched together where they are
        # not on this disk yet (object storage).
        spans: Dict[str, List[Tuple[int, int]]] = {}
        for read in self.direct:
            start = read.shard.offset + read.begin
            spans.setdefault(read.shard.file, []).append((start, start + len(read.view)))
        for _, shard, begin, stop in self.copies:
            spans.setdefault(shard.file, []).append((shard.offset + begin, shard.offset + stop))
        ranges.ensure(self.reader.path, spans)

        with Checksums() as crcs:
            batch: List[Read] = []
            size = 0  # bytes of the batch
            for read in sorted(self.direct, key=lambda r: (r.shard.file, r.shard.offset + r.begin)):
                if batch and not self.follows(batch, size, read):
                    self.reader.read(batch)
                    crcs.submit([piece for r in batch for piece in self.chunks(r)])
                    batch, size = [], 0
                batch.append(read)
                size += len(read.view)
            if batch:
                self.reader.read(batch)
                crcs.submit([piece for r in batch for piece in self.chunks(r)])
            for (key, shard, begin, stop), boxes in self.copies.items():
                scratch = aligned_empty(stop - begin)
                read = Read(key, shard, begin, memoryview(scratch))
                self.reader.read([read])
                crcs.submit(self.chunks(read))
                crcs.wait(pending=1)  # at most two scratch buffers alive
                itemsize = self.reader.manifest.arrays[key].storage_dtype.itemsize
                for target, inner, dest in boxes:
                    where = tuple(slice(a - t, b - t) for (a, b), (t, _) in zip(inner, target))
                    dest.reshape(extents(target) + (itemsize,))[where] = sub_view(scratch, shard.box, inner, itemsize, begin)
        problems: Dict[str, str] = {}
        for cid, (key, file, expected) in self.expected.items():
            if crcs.hex(cid) != expected and key not in problems:
                problems[key] = f"{CHECKSUM_MISMATCH} in {file}, at byte {cid.split(':')[1]}"
        return problems

    @staticmethod
    def follows(batch: List[Read], size: int, read: Read) -> bool:
        r"""Whether a read continues a batch of :py:`size` bytes: the next bytes of the
        same file, within one system call's limits."""

        last = batch[-1]
        return (
            read.shard.file == last.shard.file
            and read.shard.offset + read.begin == last.shard.offset + last.begin + len(last.view)
            and len(batch) < MAX_BUFFERS
            and size + len(read.view) <= READ_CHUNK_BYTES
        )


def host_only(info: ArrayInfo) -> bool:
    r"""Whether JAX cannot hold the array exactly (64-bit data without ``jax_enable_x64``)."""

    return not info.key_impl and jax.dtypes.canonicalize_dtype(info.storage_dtype) != info.storage_dtype


class ShardedReader(Reader):
    r"""An open sharded directory: its manifest checked; its data files opened by the
    first read (:func:`inox_io.inspect` needs the manifest alone).

    The data files are opened from the directory whose manifest was read, so that an
    overwrite swapping directories meanwhile cannot pair the old manifest with new
    files; if it removed the old files before they were opened, the new checkpoint,
    whole, is read instead.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.folder: int | None = None  #: the open directory
        self.fds: Dict[str, int] | None = None  # opened by the first read
        self.open()

    def open(self) -> None:
        r"""Opens the directory at the path and reads its manifest; again if an
        overwrite replaced the directory meanwhile (and is removing the old one)."""

        self.status: os.stat_result | None = None
        again_if_replaced(self.path, self.open_once, lambda: self.status)

    def open_once(self) -> None:
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            folder = os.open(self.path, flags)
        except NotADirectoryError:
            raise CheckpointError(self.path, "not a directory (a checkpoint directory expected)") from None
        except FileNotFoundError:
            raise
        except OSError as e:
            raise CheckpointError(self.path, f"cannot be opened ({e})") from None
        try:
            self.status = os.fstat(folder)
            text, data = read_manifest(self.path, folder)
            # Parsed once; the shards, thousands of entries, are checked one by one below.
            self.manifest = Manifest.from_json(text, source=str(self.path), parsed=data, layout_fields=["shards"])
            self.chunk, self.shards = parse_shards(self.path, self.manifest, data)
        except BaseException:
            os.close(folder)
            raise
        self.close()
        self.folder = folder
        self.exact = {key: {s.box: s for s in shards} for key, shards in self.shards.items() if len(shards) > 1}

    def files(self) -> Dict[str, int]:
        r"""The descriptors of the data files, opened at the first read (regular files
        only); refuses a file that is missing or too short for its shards.

        Raises:
            CheckpointError: also if the checkpoint was replaced by one of other arrays
                or ties (what was asked of it may not fit: read it again), or during each
                of :py:`MAX_REPLACEMENTS` opens.
        """

        if self.fds is not None:
            return self.fds
        for _ in range(MAX_REPLACEMENTS):
            self.fds = {}
            try:
                self.open_files()
                return self.fds
            except CheckpointError:
                self.close_files()
                if not replaced(self.path, self.status):
                    raise
            before = self.manifest
            self.open()
            if not self.manifest.reads_as(before):
                raise CheckpointError(
                    self.path, "replaced by a checkpoint of other arrays or ties while it was read; read it again"
                )
        raise CheckpointError(self.path, f"replaced during each of {MAX_REPLACEMENTS} opens in a row; read it again")

    def open_files(self) -> None:
        ends: Dict[str, Tuple[int, str]] = {}
        for key, shards in self.shards.items():
            for s in shards:
                ends[s.file] = max(ends.get(s.file, (0, key)), (s.offset + s.nbytes, key))
        for name, (end, key) in sorted(ends.items()):
            try:
                fd = self.fds[name] = open_regular(name, dir_fd=self.folder)
            except FileNotFoundError:
                raise CheckpointError(self.path, f"{name}: missing (the manifest lists shards in it)", key=key) from None
            except CheckpointError as e:
                raise CheckpointError(self.path, f"{name}: {e.message}", key=key) from None
            st = os.fstat(fd)
            if st.st_size < end:
                raise CheckpointError(self.path, f"{name}: {st.st_size} bytes, shards up to byte {end} expected (truncated?)", key=key)

    def close_files(self) -> None:
        fds, self.fds = self.fds or {}, None
        for fd in fds.values():
            os.close(fd)

    def close(self) -> None:
        self.close_files()
        folder, self.folder = self.folder, None
        if folder is not None:
            os.close(folder)

    def overlapping(self, key: str, target: Box) -> List[Shard]:
        r"""The stored shards of :py:`key` that a box overlaps."""

        shards = self.shards[key]
        exact = self.exact.get(key, {}).get(target) if len(shards) > 1 else None
        if exact is not None:
            return [exact]
        if len(shards) == 1:
            return shards
        return [s for s in shards if intersection(s.box, target) is not None]

    def read(self, reads: Sequence[Read]) -> None:
        r"""Fills consecutive reads of one file with one system call (and more after
        short reads). Their bytes are on this disk: :meth:`Plan.run` announced them
        (:func:`inox_io.storage.ranges.ensure`) before any read."""

        first = reads[0]
        offset, size = first.shard.offset + first.begin, sum(len(r.view) for r in reads)
        n = preadv_all(self.files()[first.shard.file], [r.view for r in reads], offset)
        READS.add(n)
        if n < size:
            raise CheckpointError(self.path, f"{first.shard.file}: ends before byte {offset + size} (truncated?)", key=first.key)

    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, Any]:
        plan = Plan(self, verify)
        wholes: Dict[str, np.ndarray | None] = {}
        parts: Dict[str, Dict[Box, np.ndarray]] = {}
        for key, target in targets.items():
            info = self.manifest.arrays[key]
            shape = info.storage_shape
            if math.prod(shape) == 0:
                wholes[key] = None
            elif target.sharding is None or target.transform is not None or info.key_impl or host_only(info):
                # On the host first: the default device, a transform, key data, 64-bit
                # data JAX would narrow (place() says what to do with each).
                wholes[key] = plan.box(key, tuple((0, n) for n in shape))
            else:
                parts[key] = {box: plan.box(key, box) for box in local_boxes(target.sharding, shape)}
        problems = plan.run()
        if problems:
            raise damage_error(self.path, problems)

        infos, hosts = {}, {}
        for key, buffer in wholes.items():
            info = self.manifest.arrays[key]
            dtype, shape = info.storage_dtype, info.storage_shape
            host = np.zeros(shape, dtype) if buffer is None else buffer.view(dtype).reshape(shape)
            infos[key], hosts[key] = targets[key].apply(info, host)
        out = place_all(infos, hosts, targets)
        for key, boxes in parts.items():
            info = self.manifest.arrays[key]
            views = {box: buffer.view(info.storage_dtype).reshape(extents(box)) for box, buffer in boxes.items()}
            out[key] = jax.make_array_from_callback(
                info.shape, targets[key].sharding, lambda index, views=views, shape=info.shape: views[box_of(index, shape)]
            )
        return out

    def host(self, key: str) -> np.ndarray:
        info = self.manifest.arrays[key]
        if math.prod(info.storage_shape) == 0:
            return np.zeros(info.storage_shape, info.storage_dtype)
        plan = Plan(self, verify=False)
        buffer = plan.box(key, tuple((0, n) for n in info.storage_shape))
        plan.run()
        return buffer.view(info.storage_dtype).reshape(info.storage_shape)

    def verify(self, keys: Iterable[str] | None = None) -> Dict[str, str]:
        r"""Reads every shard of the arrays, :data:`READ_CHUNK_BYTES` at a time, and
        checks each chunk against its checksum."""

        problems: Dict[str, str] = {}
        self.files()  # before the shards are listed (see Plan)
        for key in self.manifest.arrays if keys is None else keys:
            try:
                for shard in self.shards[key]:
                    for begin in range(0, shard.nbytes, READ_CHUNK_BYTES):
                        plan = Plan(self, verify=True)
                        size = min(READ_CHUNK_BYTES, shard.nbytes - begin)
                        plan.direct.append(Read(key, shard, begin, memoryview(aligned_empty(size))))
                        found = plan.run()
                        if found:
                            raise CheckpointError(self.path, found[key], key=key)
            except CheckpointError as e:
                problems[key] = e.message
        return problems
