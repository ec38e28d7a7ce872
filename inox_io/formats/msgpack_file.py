r"""The msgpack format: one file that any msgpack library decodes as

.. code-block:: text

    {"inox_io": "<manifest JSON>", "arrays": {"<key>": <raw bytes>, ...}}

The manifest comes first, so inspecting a file reads only its head. Array bytes are
raw (C order, little-endian, dtype and shape in the manifest); the reader maps them in
place instead of decoding the whole file.
"""

from __future__ import annotations

__all__ = ["MsgpackFormat"]

import msgpack
import struct

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Tuple

from ..manifest import FORMAT, MAX_MANIFEST_BYTES, Manifest
from .payload import FileFormat, FileReader, write_payload_file

ARRAYS = "arrays"


def bin_header(n: int) -> bytes:
    if n >= 2**32:
        raise ValueError(f"{n} bytes; msgpack stores at most 4 GiB per array")
    if n < 2**8:
        return struct.pack(">BB", 0xC4, n)
    if n < 2**16:
        return struct.pack(">BH", 0xC5, n)
    return struct.pack(">BI", 0xC6, n)


def encode_header(manifest: Manifest) -> bytes:
    packer = msgpack.Packer()
    return (
        packer.pack_map_header(2)
        + packer.pack(FORMAT)
        + packer.pack(manifest.to_json())
        + packer.pack(ARRAYS)
        + packer.pack_map_header(len(manifest.arrays))
    )


class MsgpackFormat(FileFormat):
    r"""``*.msgpack`` files."""

    name, suffix, description = "msgpack", ".msgpack", "single msgpack files"

    def matches(self, path: Path) -> bool:
        return path.suffix == ".msgpack"

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
        payloads = []
        for key, info in manifest.arrays.items():
            try:
                payloads.append((entry_prefix(key, info.nbytes), key))
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        write_payload_file(path, manifest, encode_header, str, payloads, arrays, overwrite=overwrite, progress=progress)

    def open(self, path: Path) -> MsgpackReader:
        return MsgpackReader(path)


def entry_prefix(key: str, nbytes: int) -> bytes:
    r"""The bytes before an array's in the file: its key, then its bin header."""

    return msgpack.packb(key) + bin_header(nbytes)


class MsgpackReader(FileReader):
    r"""Reads the head of the file (the manifest) and computes where each array lies
    from it, instead of walking the file: a walk would touch a page beside every array,
    each a disk access of its own when the file is not cached. The key and bin header
    before each array are checked when they are read, with the array."""

    def parse(self, buffer: memoryview) -> Tuple[Manifest, Dict[str, Tuple[int, int]]]:
        self.data, self.offset = buffer, 0

        if self.map_header() != 2 or self.string() != FORMAT:
            self.fail(f"not an inox_io msgpack file (a map starting with {FORMAT!r} expected)")
        text = self.string(limit=MAX_MANIFEST_BYTES)
        manifest = Manifest.from_json(text, source=str(self.path))
        if self.string() != ARRAYS:
            self.fail(f"malformed file ({ARRAYS!r} expected after the manifest)")
        count = self.map_header()

        ranges, offset = {}, self.offset
        for key, info in manifest.arrays.items():
            try:
                prefix = entry_prefix(key, info.nbytes)
            except (UnicodeEncodeError, ValueError) as e:
                self.fail(f"cannot be a msgpack key ({e})", key=key)
            self.prefixes[key] = prefix
            ranges[key] = (offset + len(prefix), offset + len(prefix) + info.nbytes)
            offset = ranges[key][1]
        if count != len(manifest.arrays) or offset != len(buffer):
            self.diagnose(manifest, count)
        del self.data
        return manifest, ranges

    def diagnose(self, manifest: Manifest, count: int) -> None:
        r"""Walks the arrays of a file that is not laid out as the manifest implies, to
        say which entry is wrong; always raises."""

        found = set()
        for _ in range(count):
            key = self.string()
            if key in found:
                self.fail("stored twice", key=key)
            found.add(key)
            if key not in manifest.arrays:
                self.fail("stored but not listed in the manifest", key=key)
            n = self.bin_header()
            if n != manifest.arrays[key].nbytes:
                self.fail(f"{n} bytes stored, {manifest.arrays[key].nbytes} expected", key=key)
            self.offset += n
        for key in manifest.arrays:
            if key not in found:
                self.fail("listed in the manifest but not stored", key=key)
        if self.offset > len(self.data):
            self.fail(f"{len(self.data)} bytes, {self.offset} expected from the manifest (truncated?)")
        if self.offset < len(self.data):
            self.fail(f"{len(self.data) - self.offset} bytes after the last array (damaged?)")
        self.fail("arrays not in the manifest's order, or headers not of the smallest size")

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            self.fail(f"unexpected end of file at byte {self.offset} (truncated?)")
        self.need([(self.offset, self.offset + n)])
        chunk = bytes(self.data[self.offset : self.offset + n])
        self.offset += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def map_header(self) -> int:
        tag = self.uint(1)
        if 0x80 <= tag <= 0x8F:
            return tag & 0x0F
        if tag in (0xDE, 0xDF):
            return self.uint(2 if tag == 0xDE else 4)
        self.fail(f"malformed file (a map expected at byte {self.offset - 1})")

    def string(self, limit: int = 2**16) -> str:
        tag = self.uint(1)
        if 0xA0 <= tag <= 0xBF:
            n = tag & 0x1F
        elif tag in (0xD9, 0xDA, 0xDB):
            n = self.uint({0xD9: 1, 0xDA: 2, 0xDB: 4}[tag])
        else:
            self.fail(f"malformed file (a string expected at byte {self.offset - 1})")
        if n > limit:
            self.fail(f"a string of {n} bytes at byte {self.offset}, more than the {limit} allowed")
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            self.fail(f"malformed file (invalid UTF-8 at byte {self.offset - n})")

    def bin_header(self) -> int:
        tag = self.uint(1)
        if tag in (0xC4, 0xC5, 0xC6):
            return self.uint({0xC4: 1, 0xC5: 2, 0xC6: 4}[tag])
        self.fail(f"malformed file (binary data expected at byte {self.offset - 1})")
