r"""Sharded safetensors checkpoints, as Hugging Face writes them: an index
``NAME.safetensors.index.json`` and shard files ``NAME-00001-of-00003.safetensors`` beside it.

.. code-block:: text

    {"metadata": {"total_size": 1234, "inox_io": "<manifest JSON>"},
     "weight_map": {"<key>": "NAME-00001-of-00003.safetensors", ...}}

The shards are plain safetensors files (readable by ``safetensors`` and ``transformers``
one by one); the manifest, when there is one, lives in the index. A shard's
``__metadata__`` holds the caller's metadata and, for each array it stores that other
names share, ``dropped_name -> kept_name`` as :func:`safetensors.torch.save_model` writes.

Writing is atomic: the shards are written first, under names the current checkpoint
does not use, then the index replaces the old one in one rename, then the shards of the
old index are removed. A crash leaves the old checkpoint or the new one. A save removes
only files it can prove are its own (:func:`own_shards`): names of the old index that
follow this module's shard naming, beside the index; and, when no other save runs in
the folder (:func:`inox_io.atomic.save_guard`), what killed saves of the same index left
there (its temporaries, and shards of its naming that the index does not reference).

Example:
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + '/model.safetensors.index.json'
    >>> _ = inox_io.save(path, {'a': jnp.ones(300), 'b': jnp.zeros(300)}, max_shard_size=1500)
    >>> sorted(p.name for p in Path(path).parent.iterdir())
    ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
    >>> inox_io.load(path, {'a': jnp.zeros(300), 'b': jnp.zeros(300)})['a'][:3]
    Array([1., 1., 1.], dtype=float32)
"""

from __future__ import annotations

__all__ = ["INDEX_SUFFIX", "DEFAULT_MAX_SHARD_SIZE", "HFIndexFormat", "parse_size", "plan_shards"]

import errno
import json
import numpy as np
import os
import re
import secrets

from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple

import jax

from ..atomic import NAME_MAX, TEMP_PREFIX, AtomicFile, fsync_directory, read_regular, replaced, save_error, save_guard, write_all
from ..errors import CheckpointError
from ..manifest import FORMAT, MAX_MANIFEST_BYTES, Manifest, misplaced_manifest
from ..storage import ranges
from .interface import Format, Reader, Target
from .payload import write_payload_file
from .safetensors_file import SAFETENSORS_DTYPES, SafetensorsReader, foreign_manifest, header_entry

INDEX_SUFFIX = ".safetensors.index.json"

#: The default largest shard, as ``transformers``' ``save_pretrained`` (5 GB).
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9

MAX_INDEX_BYTES = MAX_MANIFEST_BYTES + 64 * 2**20

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(size: int | str) -> int:
    r"""A size in bytes, from an integer or a string such as ``"5GB"`` (decimal units,
    as ``transformers``) or ``"500MiB"`` (binary units).

    Example:
        >>> parse_size('5GB'), parse_size('1.5 KiB'), parse_size(100)
        (5000000000, 1536, 100)
    """

    if isinstance(size, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", size)
        if match is None or match.group(2).upper() not in _UNITS:
            raise ValueError(f"max_shard_size {size!r}: a size such as '5GB' or '500MiB' expected")
        size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"max_shard_size {size!r}: a positive number of bytes expected")
    return size


def plan_shards(manifest: Manifest, max_shard_size: int) -> List[List[str]]:
    r"""Splits the stored keys into shards of at most :py:`max_shard_size` bytes, in
    manifest order; an array larger than that gets a shard of its own.

    Example:
        >>> from inox_io.manifest import ArrayInfo
        >>> m = Manifest({k: ArrayInfo('uint8', (n,), n) for k, n in [('a', 6), ('b', 5), ('c', 20), ('d', 1)]})
        >>> plan_shards(m, 10)
        [['a'], ['b'], ['c'], ['d']]
        >>> plan_shards(m, 12)
        [['a', 'b'], ['c'], ['d']]
    """

    shards: List[List[str]] = []
    size = 0
    for key, info in manifest.arrays.items():
        if not shards or size + info.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += info.nbytes
    return shards or [[]]


def plain_header(manifest: Manifest, extra: Mapping[str, str]) -> bytes:
    r"""A safetensors header without inox_io manifest: shards are plain files."""

    header: Dict[str, Any] = {"__metadata__": dict(extra)} if extra else {}
    offset = 0
    for key in sorted(manifest.arrays, key=lambda k: -manifest.arrays[k].storage_dtype.itemsize):
        dtype, shape = header_entry(manifest.arrays[key])
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + manifest.arrays[key].nbytes]}
        offset += manifest.arrays[key].nbytes
    data = json.dumps(header, separators=(",", ":")).encode()
    data += b" " * (-len(data) % 8)
    return len(data).to_bytes(8, "little") + data


def shard_file_names(index: Path, count: int, taken: Iterable[str]) -> List[str]:
    r"""``NAME-0000i-of-0000n.safetensors``, or, when one of those names is taken (by
    the current checkpoint, whose shards must stay whole until the index switches),
    ``NAME-<random>-0000i-of-0000n.safetensors``."""

    prefix = index.name[: -len(INDEX_SUFFIX)]
    names = [f"{prefix}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    if set(names) & set(taken):
        token = secrets.token_hex(4)
        names = [f"{prefix}-{token}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    return names


def shard_pattern(index: Path) -> re.Pattern:
    r"""The names :func:`shard_file_names` gives the shards of :py:`index`, and no other.

    Example:
        >>> pattern = shard_pattern(Path('m.safetensors.index.json'))
        >>> [bool(pattern.fullmatch(n)) for n in ('m-00001-of-00002.safetensors', 'm-0a1b2c3d-00002-of-00002.safetensors', 'other.safetensors', 'sub/m-00001-of-00002.safetensors')]
        [True, True, False, False]
    """

    prefix = re.escape(index.name[: -len(INDEX_SUFFIX)])
    return re.compile(prefix + r"-(?:[0-9a-f]{8}-)?[0-9]{5,}-of-[0-9]{5,}\.safetensors")


def own_shards(index: Path, names: Iterable[str]) -> List[str]:
    r"""Those of :py:`names` (shard names an index of :py:`index` recorded) that a save
    of :py:`index` may remove: names of its own shard naming (so a plain file name,
    never the index itself nor another checkpoint's file), in the index's folder.

    Example:
        >>> own_shards(Path('m.safetensors.index.json'), ['m-00001-of-00001.safetensors', 'sub/m-00001-of-00001.safetensors', 'm.safetensors.index.json', 'other.safetensors'])
        ['m-00001-of-00001.safetensors']
    """

    pattern = shard_pattern(index)
    return [name for name in names if pattern.fullmatch(name)]


def leftovers(index: Path, referenced: Iterable[str]) -> List[str]:
    r"""What interrupted saves of :py:`index` left in its folder: shards of its naming
    that the index does not reference (the new shards of a save killed before its index
    was committed, or the old ones of a save killed right after), and temporaries of
    its shards and of the index. Only to be removed while no save runs in the folder
    (:func:`inox_io.atomic.save_guard`): a running save's are just the same."""

    pattern, referenced = shard_pattern(index), set(referenced)
    out = []
    for name in os.listdir(index.parent):
        if name.startswith(TEMP_PREFIX):
            # .inox_io-tmp-<name>.<pid>.<token>: a temporary of a shard or of the index
            stem = name[len(TEMP_PREFIX) :].rsplit(".", 2)[0]
            if pattern.fullmatch(stem) or stem == index.name:
                out.append(name)
        elif pattern.fullmatch(name) and name not in referenced:
            out.append(name)
    return out


def _read_index(path: Path) -> Tuple[Dict[str, Any], os.stat_result]:
    r"""The index, validated, and the status of the file read (its identity)."""

    def fail(message: str):
        raise CheckpointError(path, message)

    data, status = read_regular(path, MAX_INDEX_BYTES)
    try:
        index = json.loads(data)
    except (ValueError, RecursionError) as e:
        fail(f"malformed index ({e})")
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        fail("malformed index (an object with a 'weight_map' expected)")
    metadata = index.get("metadata", {})
    if not isinstance(metadata, dict):
        fail("malformed index ('metadata' must be an object)")
    for key, shard in index["weight_map"].items():
        # A shard is a file beside the index: no absolute paths, no way out of the folder.
        parts = PurePosixPath(shard).parts if isinstance(shard, str) else ()
        if not parts or shard.startswith("/") or "\\" in shard or any(p in ("..", ".") for p in parts):
            raise CheckpointError(path, f"shard {shard!r}: a file name beside the index expected", key=key)
        try:
            valid = "\0" not in shard and os.fsencode(shard) is not None
        except UnicodeError:  # a lone surrogate, which no file name can hold
            valid = False
        if not valid:
            raise CheckpointError(path, f"shard {shard!r}: not a valid file name", key=key)
    return index, status


class IndexReader(Reader):
    r"""An open sharded checkpoint: the index, and a memory map per shard."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shards: Dict[str, SafetensorsReader] = {}
        self.status: os.stat_result | None = None  #: the index file read
        try:
            self.open()
        except CheckpointError:
            self.close()
            if self.status is None or not replaced(self.path, self.status):
                raise
            # An overwrite committed between reading the index and opening its shards
            # (which it then removed): the new checkpoint is whole, read it instead.
            self.shards = {}
            try:
                self.open()
            except BaseException:
                self.close()
                raise

    def open(self) -> None:
        r"""Reads the index and opens every shard: loads then read the shards of this
        index, even if an overwrite replaces (and removes) them meanwhile."""

        index, self.status = _read_index(self.path)
        weight_map: Dict[str, str] = index["weight_map"]

        shards = list(dict.fromkeys(weight_map.values()))
        # Where the shards are fetched from object storage in ranges: the blocks their
        # headers start in, all at once, rather than one shard's after another's.
        ranges.ensure(self.path.parent, {shard: [(0, 8)] for shard in shards})
        for shard in shards:
            try:
                self.shards[shard] = SafetensorsReader(self.path.parent / shard)
            except FileNotFoundError:
                raise CheckpointError(self.path, f"shard {shard} is missing") from None

        text = index.get("metadata", {}).get(FORMAT)
        if text is not None:
            if not isinstance(text, str):
                raise CheckpointError(self.path, f"metadata {FORMAT!r}: a JSON string expected")
            self.manifest = Manifest.from_json(text, source=str(self.path))
            stray = [key for key in weight_map if key not in self.manifest.arrays]
            if stray:
                raise CheckpointError(self.path, "in the weight map but not in the manifest", key=stray[0])
        else:
            misplaced = misplaced_manifest(index, expected=("metadata", FORMAT))
            if misplaced is not None:  # damaged: read as a foreign index, nothing would be checked
                raise CheckpointError(self.path, f"holds an inox_io manifest under {misplaced!r}, not metadata.{FORMAT} (damaged?)")
            self.manifest = Manifest({})  # filled from the shards' headers below

        self.owner: Dict[str, SafetensorsReader] = {}
        for key, shard in weight_map.items():
            reader = self.shards[shard]
            found = reader.manifest.arrays.get(key)
            if found is None:
                raise CheckpointError(self.path, f"in the weight map but not in {shard}", key=key)
            if text is None:
                self.manifest.arrays[key] = found  # a foreign checkpoint: the shard's header says all
            else:
                expected = header_entry(self.manifest.arrays[key])
                stored = (SAFETENSORS_DTYPES.get(found.dtype), list(found.shape))
                if stored != expected:
                    raise CheckpointError(self.path, f"{shard} says {stored[0]}{stored[1]}, the manifest {expected[0]}{expected[1]}", key=key)
            self.owner[key] = reader
        missing = [key for key in self.manifest.arrays if key not in self.owner]
        if missing:
            raise CheckpointError(self.path, "in the manifest but not in the weight map", key=missing[0])

        #: The shards' ``__metadata__`` entries (aliases ``dropped -> kept`` among them).
        self.metadata: Dict[str, str] = {}
        for reader in self.shards.values():
            self.metadata.update({k: v for k, v in reader.metadata.items() if k != FORMAT})
        if text is None:
            index_metadata = index.get("metadata", {})
            self.manifest = foreign_manifest(self.manifest.arrays, {**index_metadata, **self.metadata}, "Hugging Face index")
        for reader in self.shards.values():
            # Each shard reads its arrays as the index describes them (true dtypes,
            # checksums): its own reader, memory map and batched reads do the work.
            arrays = {k: self.manifest.arrays[k] for k, r in self.owner.items() if r is reader}
            reader.manifest = Manifest(arrays, no_checksums=self.manifest.no_checksums)

    def host(self, key: str) -> np.ndarray:
        return self.owner[key].host(key)

    def verify(self, keys: Iterable[str] | None = None) -> Dict[str, str]:
        problems = {}
        for key in self.manifest.arrays if keys is None else keys:
            problems.update(self.owner[key].verify([key]))
        return problems

    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, Any]:
        out: Dict[str, jax.Array] = {}
        for reader in self.shards.values():
            mine = {key: target for key, target in targets.items() if self.owner[key] is reader}
            if mine:
                out.update(reader.load(mine, verify=verify))
        return out

    def close(self) -> None:
        for reader in self.shards.values():
            reader.close()


class HFIndexFormat(Format):
    r"""``*.safetensors.index.json`` indices and their shards."""

    name, suffix = "safetensors-index", INDEX_SUFFIX
    description = "sharded checkpoints (Hugging Face index)"
    options = ("max_shard_size",)

    def matches(self, path: Path) -> bool:
        return path.name.endswith(INDEX_SUFFIX)

    def open(self, path: Path) -> IndexReader:
        return IndexReader(path)

    def parse_options(self, path: Path, *, max_shard_size: int | str | None = None) -> Dict[str, Any]:
        r"""Arguments:
        max_shard_size: The largest shard, in bytes or as ``"5GB"`` (by default, 5 GB).
        """

        return {"max_shard_size": parse_size(DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size)}

    def write(
        self,
        path: Path,
        manifest: Manifest,
        arrays: Mapping[str, Any],
        *,
        overwrite: bool,
        extra: Mapping[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
        max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    ) -> None:
        r"""Writes the shards, then the index. An entry of :py:`extra` naming an alias
        of the manifest goes only to the shard of its kept array."""

        path, extra = Path(path), extra or {}
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")

        def clean() -> None:
            # No other save runs in the folder: what is not the index's is a leftover.
            try:
                referenced = _read_index(path)[0]["weight_map"].values()
            except FileNotFoundError:
                referenced = []
            except CheckpointError:
                return  # a damaged index: which shards it meant is unknown, keep them all
            for name in leftovers(path, referenced):
                try:
                    (path.parent / name).unlink()
                except OSError:
                    pass  # a directory of that name, say: not ours to remove

        with save_guard(path.parent, clean, target=path):
            self.write_locked(path, manifest, arrays, overwrite, extra, max_shard_size, progress)

    def write_locked(
        self,
        path: Path,
        manifest: Manifest,
        arrays: Mapping[str, Any],
        overwrite: bool,
        extra: Mapping[str, str],
        max_shard_size: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        try:
            old = set(own_shards(path, _read_index(path)[0]["weight_map"].values()))
        except (OSError, CheckpointError):
            old = set()  # no index, or one that cannot be read now: no shards to remove

        plan = plan_shards(manifest, max_shard_size)
        # New names, never an existing file's: the current checkpoint's shards (whether
        # or not its index could be read) stay whole until the new index replaces it.
        names = shard_file_names(path, len(plan), old | set(os.listdir(path.parent)))
        too_long = [name for name in names if len(os.fsencode(name)) > NAME_MAX]
        if too_long:
            raise OSError(
                errno.ENAMETOOLONG,
                f"shard name {too_long[0]!r} of {len(os.fsencode(too_long[0]))} bytes, more than the {NAME_MAX} "
                f"a file name may have; choose a shorter index name (not saved; the checkpoint there, if any, is untouched)",
                os.fspath(path),
            )
        written: List[Path] = []
        index_file: AtomicFile | None = None
        before = 0  # bytes of arrays in the shards written
        try:
            weight_map = {}
            for name, keys in zip(names, plan):
                shard = Manifest({key: manifest.arrays[key] for key in keys})
                entries = {
                    k: v for k, v in extra.items()
                    if manifest.aliases.get(k) != v or v in shard.arrays
                }  # fmt: skip
                header = plain_header(shard, entries)
                order = sorted(keys, key=lambda k: -manifest.arrays[k].storage_dtype.itemsize)
                written.append(path.parent / name)
                # overwrite=True: a crashed save may have left an unreferenced shard here.
                write_payload_file(
                    written[-1], shard, lambda m: header, str, [(b"", k) for k in order], arrays, overwrite=True,
                    progress=None if progress is None else lambda n, before=before: progress(before + n),
                )  # fmt: skip
                before += shard.nbytes
                weight_map.update({key: name for key in keys})

            manifest.no_checksums = None  # the shards' checksums, filled in as they were written
            index = {
                "metadata": {"total_size": manifest.nbytes, FORMAT: manifest.to_json()},
                "weight_map": dict(sorted(weight_map.items())),
            }
            index_file = AtomicFile(path, overwrite=overwrite)
            with index_file as f:
                write_all(f.fd, json.dumps(index, indent=2).encode() + b"\n")
        except BaseException as e:
            if index_file is not None and index_file.committed:
                raise  # the new index is in place (its folder's fsync failed): its shards stay
            for shard_path in written:
                shard_path.unlink(missing_ok=True)
            if isinstance(e, OSError) and not isinstance(e, FileExistsError) and e.filename != os.fspath(path):
                # A shard's failure, said of the checkpoint the user named: the index is untouched.
                raise save_error(OSError(e.errno, os.strerror(e.errno) if e.errno else str(e)), path) from e
            raise

        # Only the old index's own shards (own_shards): never a file it merely named.
        # The new checkpoint is in place: a failure here leaves a shard for the next
        # save's cleaning, or a removal that may not survive a power loss.
        for name in old - set(names):
            try:
                (path.parent / name).unlink(missing_ok=True)
            except OSError:
                pass
        try:
            fsync_directory(path.parent)
        except OSError as e:
            raise save_error(e, path, committed=True) from e
