r"""The safetensors format: one file that the plain ``safetensors`` library reads.

The header is safetensors' JSON header, with the manifest as a JSON string under
``__metadata__["inox_io"]``. Dtypes that safetensors does not know (complex128, most
float8 variants, int4, ...) are stored as raw ``U8`` bytes; the manifest keeps their
true dtype and shape. Arrays are laid out by decreasing item size, so that each starts
aligned to its item size in the memory map. Files without a manifest (written by other
tools) are read with a manifest synthesized from their header.
"""

from __future__ import annotations

__all__ = ["SafetensorsFormat", "foreign_manifest"]

import json
import math
import struct

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Tuple

from ..manifest import FORMAT, MAX_MANIFEST_BYTES, ArrayInfo, Manifest, misplaced_manifest, no_duplicate_keys, shape_problem
from .payload import FileFormat, FileReader, write_payload_file

#: Manifest dtype name -> safetensors dtype name.
SAFETENSORS_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
    "float16": "F16", "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32",
    "float64": "F64", "int64": "I64", "uint64": "U64", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}  # fmt: skip
FROM_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}

MAX_HEADER_BYTES = MAX_MANIFEST_BYTES + 64 * 2**20

def foreign_manifest(arrays: Dict[str, ArrayInfo], metadata: Mapping[str, Any], tool: str) -> Manifest:
    r"""The manifest of a checkpoint written by another tool: its arrays, its metadata
    as it is, and its alias map as aliases: torch's ``save_model`` stores a tensor
    shared by several names once, and maps each other name to the stored one in
    ``__metadata__``. Who wrote it, and that it has no checksums, is its
    :attr:`Manifest.no_checksums`.

    Example:
        >>> arrays = {'wte.weight': ArrayInfo('float32', (4, 3), 48)}
        >>> m = foreign_manifest(arrays, {'format': 'pt', 'lm_head.weight': 'wte.weight'}, 'safetensors')
        >>> m.aliases, m.metadata['format']
        ({'lm_head.weight': 'wte.weight'}, 'pt')
        >>> m.no_checksums
        'written by another tool: torch save_model (safetensors with an alias map); no inox_io manifest'
    """

    aliases = {name: kept for name, kept in metadata.items() if name not in arrays and isinstance(kept, str) and kept in arrays}
    if aliases and tool == "safetensors":
        tool = "torch save_model (safetensors with an alias map)"
    elif metadata.get("format") == "pt":
        tool += ", from PyTorch"
    reason = f"written by another tool: {tool}; no inox_io manifest"
    return Manifest(dict(arrays), aliases=aliases, metadata=dict(metadata), no_checksums=reason)


def header_entry(info: ArrayInfo) -> Tuple[str, list]:
    r"""The safetensors dtype and shape under which an array's bytes are stored."""

    if info.key_impl:
        return "U32", list(info.storage_shape)
    if info.dtype in SAFETENSORS_DTYPES:
        return SAFETENSORS_DTYPES[info.dtype], list(info.shape)
    return "U8", [info.nbytes]


def layout(manifest: Manifest) -> Dict[str, Tuple[int, int]]:
    r"""Byte ranges, relative to the end of the header, by decreasing item size."""

    keys = sorted(manifest.arrays, key=lambda k: -manifest.arrays[k].storage_dtype.itemsize)
    ranges, offset = {}, 0
    for key in keys:
        ranges[key] = (offset, offset + manifest.arrays[key].nbytes)
        offset += manifest.arrays[key].nbytes
    return ranges


def encode_header(manifest: Manifest, ranges: Mapping[str, Tuple[int, int]], extra: Mapping[str, str]) -> bytes:
    header: Dict[str, Any] = {"__metadata__": {**extra, FORMAT: manifest.to_json()}}
    for key, (begin, end) in ranges.items():
        dtype, shape = header_entry(manifest.arrays[key])
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
    data = json.dumps(header, separators=(",", ":")).encode()
    data += b" " * (-len(data) % 8)  # as safetensors does: the data starts 8-aligned
    return struct.pack("<Q", len(data)) + data


class SafetensorsFormat(FileFormat):
    r"""``*.safetensors`` files."""

    name, suffix, description = "safetensors", ".safetensors", "single safetensors files"

    def matches(self, path: Path) -> bool:
        return path.suffix == ".safetensors"

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
        ranges = layout(manifest)
        write_payload_file(
            path,
            manifest,
            lambda m: encode_header(m, ranges, extra or {}),
            lambda text: json.dumps(text)[1:-1],
            [(b"", key) for key in ranges],
            arrays,
            overwrite=overwrite,
            progress=progress,
        )

    def open(self, path: Path) -> SafetensorsReader:
        return SafetensorsReader(path)


class SafetensorsReader(FileReader):
    def parse(self, buffer: memoryview) -> Tuple[Manifest, Dict[str, Tuple[int, int]]]:
        if len(buffer) < 8:
            self.fail(f"{len(buffer)} bytes, too short for a safetensors header (truncated?)")
        self.need([(0, 8)])
        (length,) = struct.unpack("<Q", buffer[:8])
        if length > MAX_HEADER_BYTES:
            self.fail(f"header length {length} exceeds the {MAX_HEADER_BYTES} bytes allowed")
        if 8 + length > len(buffer):
            self.fail(f"header length {length} exceeds the file size {len(buffer)} (truncated?)")
        self.need([(8, 8 + length)])
        try:
            # Duplicates refused: the last would silently win, unlike in other readers.
            header = json.loads(bytes(buffer[8 : 8 + length]), object_pairs_hook=no_duplicate_keys)
        except (ValueError, RecursionError) as e:
            self.fail(f"malformed safetensors header ({e})")
        if not isinstance(header, dict):
            self.fail("malformed safetensors header (an object expected)")

        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            self.fail("malformed __metadata__ (a map of strings expected)")
        self.metadata = metadata

        start = 8 + length
        stored: Dict[str, Tuple[str, list, int, int]] = {}
        for key, entry in header.items():
            try:
                dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            except (TypeError, KeyError, ValueError):
                self.fail("malformed header entry (dtype, shape and data_offsets expected)", key=key)
            if not isinstance(dtype, str) or not isinstance(shape, list):
                self.fail("malformed header entry (a dtype string and a shape list expected)", key=key)
            if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)):
                self.fail("shape and offsets must be non-negative integers", key=key)
            stored[key] = (dtype, shape, start + begin, start + end)

        if FORMAT in metadata:
            manifest = Manifest.from_json(metadata[FORMAT], source=str(self.path))
        else:
            name = misplaced_manifest(metadata)
            if name is not None:
                self.fail(f"__metadata__ holds an inox_io manifest under {name!r}, not {FORMAT!r} (damaged?)")
            manifest = self.synthesize(stored)

        ranges = {}
        for key, info in manifest.arrays.items():
            if key not in stored:
                self.fail("listed in the manifest but not in the safetensors header", key=key)
            dtype, shape, begin, end = stored[key]
            if (dtype, shape) != header_entry(info):
                self.fail(f"header says {dtype}{shape}, the manifest {info.dtype}{list(info.shape)}", key=key)
            ranges[key] = (begin, end)
        for key in stored:
            if key not in manifest.arrays:  # bytes nothing accounts for: not the file we wrote
                self.fail("stored but not listed in the manifest", key=key)
        return manifest, ranges

    def synthesize(self, stored: Mapping[str, Tuple[str, list, int, int]]) -> Manifest:
        r"""A manifest for a file written by another tool (:func:`foreign_manifest`)."""

        arrays = {}
        for key, (dtype, shape, begin, end) in stored.items():
            if dtype not in FROM_SAFETENSORS:
                self.fail(f"unsupported safetensors dtype {dtype!r}", key=key)
            info = ArrayInfo(FROM_SAFETENSORS[dtype], tuple(shape), 0)
            problem = shape_problem(info.shape, info.storage_dtype.itemsize)
            if problem:
                self.fail(problem, key=key)
            info.nbytes = math.prod(info.shape) * info.storage_dtype.itemsize
            arrays[key] = info
        return foreign_manifest(arrays, self.metadata, "safetensors")
