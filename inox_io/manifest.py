r"""The manifest: what a checkpoint holds, built from a tree, checked against a ``like``
tree, and encoded as JSON inside every format (see ``docs/format.md``).

Example:
    >>> p = nn.Parameter(jnp.ones(3))
    >>> tree = nn.Scope(a=nn.Reference('p', p), b=nn.Reference('p', p), name='demo')
    >>> manifest, arrays = build(tree)
    >>> list(manifest.arrays), manifest.ties
    (['.a.value.value'], [TieInfo(scope='', tag='p', path='.a', aliases=['.b'])])
    >>> manifest.statics
    {'.name': 'demo'}
    >>> Manifest.from_json(manifest.to_json(), source='demo') == manifest
    True
"""

from __future__ import annotations

__all__ = [
    "FORMAT",
    "VERSION",
    "ArrayInfo",
    "TieInfo",
    "Manifest",
    "build",
    "is_json",
    "tree_arrays",
    "structure_ties",
    "structure_statics",
    "encode_tag",
    "decode_tag",
    "no_duplicate_keys",
    "misplaced_manifest",
    "shape_problem",
    "MAX_MANIFEST_BYTES",
]

import dataclasses
import functools
import json
import jax
import jax.tree_util as jtu
import math
import numpy as np
import platform
import re
import reprlib
import warnings

from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Tuple

import inox

from inox.nn.share import ties as tree_ties
from inox.tree import Static, is_array, mask, partition, skeleton

from .dtypes import DTYPES, dtype_name, is_key_dtype
from .errors import MISSING_CHECKSUM, CheckpointError
from .keypath import descendants
from .version import __version__

FORMAT = "inox_io"
VERSION = 1
#: Version 1.1 adds chunk checksums (``chunk_crc32``), which readers of 1.0 ignore.
MINOR_VERSION = 1
#: Bytes per chunk checksum of arrays stored whole (the single-file layouts): a process
#: that loads slices of an array verifies the chunks they overlap, not the whole array.
CHUNK_CRC_BYTES = 2**20

#: PRNG implementations a file may name, with the trailing shape of their key data.
KEY_IMPLS = {"threefry2x32": (2,), "rbg": (4,), "unsafe_rbg": (4,)}
#: The dtype JAX gives the keys of each implementation (``str(key.dtype)``).
KEY_DTYPES = {"threefry2x32": "key<fry>", "rbg": "key<rbg>", "unsafe_rbg": "key<urbg>"}

MAX_MANIFEST_BYTES = 256 * 2**20
MAX_JSON_DEPTH = 64
#: The most dimensions an array may have: NumPy 1.x's limit (2.x allows 64), so that a
#: file reads under both.
MAX_NDIM = 32
#: The most bytes one array can describe: NumPy sizes are signed 64-bit integers.
MAX_ARRAY_BYTES = 2**63 - 1
#: The most positions (stored and aliased) a manifest may imply, per byte of its JSON,
#: beyond :data:`MIN_POSITIONS`. Ties multiply: A aliases of a module of B arrays are
#: A x B positions, so a small hostile file could otherwise demand gigabytes. Real
#: trees imply about one position per 10 to 100 bytes.
POSITIONS_PER_BYTE = 4
MIN_POSITIONS = 2**16


@dataclasses.dataclass
class ArrayInfo:
    r"""One stored array: logical dtype and shape, stored size and checksum."""

    dtype: str
    shape: Tuple[int, ...]
    nbytes: int
    crc32: str | None = None  #: 8 hexadecimal digits, or None where not computed.
    key_impl: str | None = None  #: For PRNG key arrays: the key implementation.
    #: The CRC-32 of each :data:`CHUNK_CRC_BYTES` chunk of an array larger than one
    #: chunk, where the layout stores it whole. Left out of the repr: thousands of them.
    chunk_crc32: List[str] | None = dataclasses.field(default=None, repr=False)

    def chunks(self, chunk_bytes: int = CHUNK_CRC_BYTES) -> int:
        r"""How many chunk checksums an array of this size has (none if only one chunk).

        Example:
            >>> ArrayInfo('float32', (2**19,), 2**21).chunks(), ArrayInfo('float32', (2,), 8).chunks()
            (2, 0)
        """

        return -(-self.nbytes // chunk_bytes) if self.nbytes > chunk_bytes else 0

    @property
    def storage_dtype(self) -> np.dtype:
        r"""The dtype of the stored bytes (``uint32`` for key data)."""

        return np.dtype(np.uint32) if self.key_impl else DTYPES[self.dtype]

    @property
    def storage_shape(self) -> Tuple[int, ...]:
        r"""The shape of the stored bytes (key data has trailing dimensions)."""

        return self.shape + KEY_IMPLS[self.key_impl] if self.key_impl else self.shape

    def to_json(self) -> Dict[str, Any]:
        out = {"dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes, "crc32": self.crc32}
        if self.key_impl:
            out["key_impl"] = self.key_impl
        if self.chunk_crc32 is not None:
            out["chunk_crc32"] = self.chunk_crc32
        return out


@dataclasses.dataclass
class TieInfo:
    r"""One tag of one scope: the preserved occurrence's path and the pruned ones'."""

    scope: str
    tag: Hashable
    path: str
    aliases: List[str]


@dataclasses.dataclass
class Manifest:
    r"""Everything a checkpoint says about its tree, besides the array bytes."""

    arrays: Dict[str, ArrayInfo]
    ties: List[TieInfo] = dataclasses.field(default_factory=list)
    aliases: Dict[str, str] = dataclasses.field(default_factory=dict)  #: implicit sharing
    statics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)  #: JSON values
    libraries: Dict[str, str] = dataclasses.field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION
    #: Why the arrays have no checksums, where that is by design: a directory saved by
    #: several processes (none holds every array whole), a file written by another tool.
    #: None otherwise: then an array without checksum (crc32 null) is refused when read
    #: with verification (:meth:`missing_checksums`), for a null may be crafted.
    no_checksums: str | None = None
    #: For files saved with names (``save(..., names=...)``), whose stored names are not
    #: key paths: the ties of the tree as declared (tags, scopes, key paths), for the
    #: record; the stored arrays of a tie are grouped by :attr:`aliases`.
    named_ties: List[TieInfo] = dataclasses.field(default_factory=list)
    #: The bytes per chunk of the arrays' :attr:`ArrayInfo.chunk_crc32`.
    chunk_crc32_bytes: int = CHUNK_CRC_BYTES

    @property
    def nbytes(self) -> int:
        r"""The bytes of the stored arrays."""

        return sum(info.nbytes for info in self.arrays.values())

    def positions(self) -> Dict[str, str]:
        r"""Maps every array position of the tree, stored or aliased, to its stored key.

        Positions under a tie alias map to the key under the preserved occurrence.
        """

        out = {key: key for key in self.arrays}
        out.update(self.aliases)
        keys, order = sorted(self.arrays), {key: i for i, key in enumerate(self.arrays)}
        for tie in self.ties:
            below = sorted(descendants(keys, tie.path + ".value"), key=order.__getitem__)
            for alias in tie.aliases:
                for key in below:
                    out[alias + key[len(tie.path) :]] = key
        return out

    def position_count(self) -> int:
        r"""How many entries :meth:`positions` would have, at most, without building it."""

        keys = sorted(self.arrays)
        below = {path: len(descendants(keys, path + ".value")) for path in {tie.path for tie in self.ties}}
        return len(self.arrays) + len(self.aliases) + sum(len(t.aliases) * below[t.path] for t in self.ties)

    def fresh(self) -> Manifest:
        r"""A copy without checksums, for a writer of another layout, which computes the
        checksums its layout keeps.

        Example:
            >>> m = Manifest({'.w': ArrayInfo('float32', (2,), 8, crc32='0000abcd')})
            >>> m.fresh().arrays, m.arrays['.w'].crc32
            ({'.w': ArrayInfo(dtype='float32', shape=(2,), nbytes=8, crc32=None, key_impl=None)}, '0000abcd')
        """

        arrays = {key: dataclasses.replace(info, crc32=None, chunk_crc32=None) for key, info in self.arrays.items()}
        return dataclasses.replace(self, arrays=arrays)

    def reads_as(self, other: Manifest) -> bool:
        r"""Whether :py:`other` describes the same arrays and ties (not checksums,
        statics or metadata): what was asked of this checkpoint fits the other (a
        replacement of it found while reading).

        Example:
            >>> m = Manifest({'.w': ArrayInfo('float32', (2,), 8, crc32='0000abcd')})
            >>> m.reads_as(Manifest({'.w': ArrayInfo('float32', (2,), 8, crc32='1234abcd')}))
            True
            >>> m.reads_as(Manifest({'.w': ArrayInfo('float32', (3,), 12)}))
            False
        """

        def described(m: Manifest) -> Any:
            arrays = [(key, i.dtype, i.shape, i.nbytes, i.key_impl) for key, i in m.arrays.items()]
            return arrays, m.ties, m.aliases

        return described(self) == described(other)

    def saved_bytes(self) -> int:
        r"""The bytes that storing each shared array once saved."""

        return sum(self.arrays[key].nbytes for position, key in self.positions().items() if position != key)

    def missing_checksums(self, keys: Iterable[str] | None = None) -> Dict[str, str]:
        r"""The problem of each of :py:`keys` (all by default) whose checksum is missing
        though the manifest does not say that none could be computed: what a reader
        verifying arrays reports, instead of trusting data nothing can check.

        Example:
            >>> m = Manifest({'.w': ArrayInfo('float32', (2,), 8)})
            >>> m.missing_checksums()
            {'.w': 'no checksum (crc32 null), and the manifest does not say why (crafted?)'}
            >>> Manifest(m.arrays, no_checksums='saved by 2 processes').missing_checksums()
            {}
        """

        if self.no_checksums is not None:
            return {}
        return {
            key: MISSING_CHECKSUM
            for key in (self.arrays if keys is None else keys)
            if self.arrays[key].crc32 is None
        }

    def to_json(self) -> str:
        extra: Dict[str, Any] = {} if self.no_checksums is None else {"no_checksums": self.no_checksums}
        if self.named_ties:
            extra["named_ties"] = _ties_json(self.named_ties)
        minor = {}
        if any(info.chunk_crc32 is not None for info in self.arrays.values()):
            minor = {"minor_version": MINOR_VERSION, "chunk_crc32_bytes": self.chunk_crc32_bytes}
        return json.dumps(
            {
                "format": self.format,
                "version": self.version,
                **minor,
                "libraries": self.libraries,
                "arrays": {key: info.to_json() for key, info in self.arrays.items()},
                "ties": _ties_json(self.ties),
                "aliases": self.aliases,
                "statics": self.statics,
                "metadata": self.metadata,
                **extra,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(
        cls,
        text: str | bytes,
        *,
        source: str,
        no_checksums_by_design: bool = False,
        parsed: Any = None,
        layout_fields: Iterable[str] = (),
    ) -> Manifest:
        r"""Parses and validates a manifest.

        Arguments:
            no_checksums_by_design: Whether the layout read can lack checksums by design
                (a directory saved by several processes), so that the manifest's
                ``no_checksums`` is believed. Elsewhere it is ignored: every writer of
                the other layouts computes checksums, so such a claim is crafted.
            parsed: The JSON value of :py:`text`, where the caller parsed it already
                (with :func:`no_duplicate_keys`): a layout reading its own fields.
            layout_fields: Fields that the layout reading the manifest checks itself,
                entry by entry: left out of the depth check, as ``arrays`` is.

        Raises:
            CheckpointError: naming :py:`source`, on anything malformed.
        """

        def fail(message: str, key: str | None = None):
            raise CheckpointError(source, f"manifest: {message}", key=key)

        if len(text) > MAX_MANIFEST_BYTES:
            fail(f"{len(text)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
        data = parsed
        if data is None:
            try:
                data = json.loads(text, object_pairs_hook=no_duplicate_keys)
            except (ValueError, RecursionError, UnicodeDecodeError) as e:
                fail(f"not valid JSON ({e})")
        # The array entries are left out: their fields are checked one by one (and
        # described with reprlib, which bounds depth), and they are thousands.
        unchecked = {"arrays", *layout_fields}
        if _depth(data if not isinstance(data, dict) else {k: v for k, v in data.items() if k not in unchecked}) > MAX_JSON_DEPTH:
            fail(f"nested deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            fail(f"format {FORMAT!r} expected")
        # type() too: True == 1 and 1.0 == 1 in Python, yet neither is version 1.
        if type(data.get("version")) is not int or data["version"] != VERSION:
            fail(f"unknown format version {data.get('version')!r}; this library reads version {VERSION}")

        minor = data.get("minor_version", 0)
        if type(minor) is not int or minor < 0:
            fail(f"minor_version {reprlib.repr(minor)}: a non-negative integer expected")
        chunk_bytes = data.get("chunk_crc32_bytes")  # later minor versions read as 1.1
        if chunk_bytes is not None and (minor < 1 or type(chunk_bytes) is not int or chunk_bytes < 1):
            fail(f"chunk_crc32_bytes {reprlib.repr(chunk_bytes)}: a positive integer expected, in version 1.1 or later")
        arrays = {}
        for key, entry in _expect(data, "arrays", dict, fail).items():
            arrays[key] = _parse_array_info(key, entry, fail, chunk_bytes)

        ties = _parse_ties(_expect(data, "ties", list, fail), fail)
        named_ties = _parse_ties(data["named_ties"], fail) if "named_ties" in data else []
        aliases = _expect(data, "aliases", dict, fail)
        for alias, key in aliases.items():
            if not isinstance(key, str) or key not in arrays:
                fail(f"implicit alias of {key!r}, which is not stored", key=alias)
        metadata = _expect(data, "metadata", dict, fail)
        libraries = _expect(data, "libraries", dict, fail)
        statics = _expect(data, "statics", dict, fail)

        reason = data.get("no_checksums")
        if reason is not None and (type(reason) is not str or not reason):
            fail(f"no_checksums {reprlib.repr(reason)}: a reason (a non-empty string) expected")

        manifest = cls(arrays, ties, aliases, statics, metadata, libraries, named_ties=named_ties)
        manifest.chunk_crc32_bytes = chunk_bytes or CHUNK_CRC_BYTES
        if no_checksums_by_design:
            manifest.no_checksums = reason
        count, limit = manifest.position_count(), MIN_POSITIONS + POSITIONS_PER_BYTE * len(text)
        if count > limit:
            fail(f"its ties imply {count} positions, more than the {limit} allowed for its size")
        return manifest


def _parse_ties(entries: Any, fail: Callable[..., Any]) -> List[TieInfo]:
    if not isinstance(entries, list):
        fail("a list of ties expected")
    ties = []
    for t in entries:
        if not isinstance(t, dict) or not all(isinstance(t.get(k), str) for k in ("scope", "path")):
            fail(f"tie {t!r}: scope and path strings expected")
        aliases = t.get("aliases")
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            fail(f"tie {t['path']}: a list of alias paths expected")
        try:
            tag = decode_tag(t.get("tag"))
        except ValueError as e:
            fail(str(e), key=t["path"])
        ties.append(TieInfo(t["scope"], tag, t["path"], aliases))
    return ties


def _ties_json(ties: List[TieInfo]) -> List[Dict[str, Any]]:
    return [{"scope": t.scope, "tag": encode_tag(t.tag), "path": t.path, "aliases": t.aliases} for t in ties]


def no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return out


def misplaced_manifest(entries: Mapping[str, Any], expected: Tuple[str, ...] = (FORMAT,)) -> str | None:
    r"""Where :py:`entries` (a file's metadata, looked into one level down) hold an
    inox_io manifest elsewhere than at :py:`expected`: under a damaged name, which would
    have the file read as another tool's, its arrays unchecked.

    Example:
        >>> misplaced_manifest({'format': 'pt', 'inox_iZ': '{"format":"inox_io","version":1}'})
        'inox_iZ'
        >>> index = {'metadaZa': {'inox_io': '{"format":"inox_io"}'}}
        >>> misplaced_manifest(index, expected=('metadata', 'inox_io'))
        'metadaZa.inox_io'
    """

    def holds(value: Any) -> bool:
        return isinstance(value, str) and value.startswith('{"format":"inox_io"')

    for name, value in entries.items():
        inner = value.items() if isinstance(value, dict) else ()
        for path, x in [((name,), value), *(((name, k), v) for k, v in inner)]:
            if holds(x) and path != expected:
                return ".".join(map(str, path))
    return None


def _depth(x: Any) -> int:
    stack, deepest = [(x, 1)], 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def _expect(data: Dict, name: str, kind: type, fail) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        fail(f"field {name!r}: {kind.__name__} expected, found {type(value).__name__}")
    return value


def _parse_array_info(key: str, entry: Any, fail, chunk_bytes: int | None = None) -> ArrayInfo:
    if type(entry) is not dict:
        fail("an object expected", key=key)
    dtype, shape, nbytes = entry.get("dtype"), entry.get("shape"), entry.get("nbytes")
    crc, impl = entry.get("crc32", _ABSENT), entry.get("key_impl")
    if crc is _ABSENT:
        # Required, null or not: a damaged field name must not turn the check off.
        fail("no crc32 field (null where there is no checksum)", key=key)

    # type() first: a list or an object is unhashable, and "in" would raise TypeError.
    if impl is not None and (type(impl) is not str or impl not in KEY_IMPLS):
        fail(f"unknown PRNG key implementation {reprlib.repr(impl)}", key=key)
    if type(dtype) is not str or (impl is None and dtype not in DTYPES):
        fail(f"unknown dtype {reprlib.repr(dtype)}", key=key)
    if impl is not None and dtype != KEY_DTYPES[impl]:
        # Else an int64 entry with a key_impl would match an int64 like and load as keys.
        fail(f"dtype {dtype!r} for {impl} keys, {KEY_DTYPES[impl]!r} expected", key=key)
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        fail(f"shape {reprlib.repr(shape)}: a list of non-negative integers expected", key=key)
    if crc is not None and not (type(crc) is str and _HEX8.fullmatch(crc)):
        fail(f"crc32 {reprlib.repr(crc)}: 8 hexadecimal digits expected", key=key)

    info = ArrayInfo(dtype, tuple(shape), nbytes, crc, impl)
    storage_shape, itemsize = info.storage_shape, info.storage_dtype.itemsize
    problem = shape_problem(storage_shape, itemsize)
    if problem:
        fail(problem, key=key)
    expected = math.prod(storage_shape) * itemsize
    if type(nbytes) is not int or nbytes != expected:
        fail(f"nbytes {reprlib.repr(nbytes)} does not match dtype {dtype} and shape {tuple(shape)} ({expected})", key=key)
    chunks = entry.get("chunk_crc32")
    if chunks is not None:
        count = info.chunks(chunk_bytes) if chunk_bytes else 0
        if not (count and type(chunks) is list and len(chunks) == count and all(type(c) is str and _HEX8.fullmatch(c) for c in chunks)):
            fail(f"chunk_crc32: one checksum (8 hexadecimal digits) per chunk of chunk_crc32_bytes expected ({count})", key=key)
        if crc is None:
            fail("chunk checksums without the checksum of the whole array", key=key)
        info.chunk_crc32 = chunks
    return info


_ABSENT = object()
_HEX8 = re.compile("[0-9a-f]{8}")


def shape_problem(shape: Tuple[int, ...], itemsize: int) -> str | None:
    r"""What makes an array of this shape impossible to create, or None.

    Empty arrays count: NumPy refuses ``(0, 2**62, 2**62)``, which holds no byte, because
    the product of its other dimensions overflows.

    Example:
        >>> shape_problem((0, 2**62, 2**62), 4)
        'shape (0, 4611686018427387904, 4611686018427387904): larger than any array can be'
    """

    if len(shape) > MAX_NDIM:
        return f"shape of {len(shape)} dimensions, more than the {MAX_NDIM} allowed"
    size = math.prod(shape) or math.prod(d for d in shape if d)
    if size * itemsize > MAX_ARRAY_BYTES:
        return f"shape {tuple(shape)}: larger than any array can be"
    return None


def encode_tag(tag: Hashable) -> Any:
    r"""Encodes a tag as JSON: strings and integers as themselves, tuples as
    :py:`{"tuple": [...]}`.

    Raises:
        TypeError: for any other tag (booleans included: they would read back as ints).

    Example:
        >>> encode_tag(('block', 3))
        {'tuple': ['block', 3]}
    """

    if isinstance(tag, str) or (isinstance(tag, int) and not isinstance(tag, bool)):
        return tag
    if isinstance(tag, tuple):
        return {"tuple": [encode_tag(t) for t in tag]}
    raise TypeError(f"tag {tag!r} cannot be saved: use a str, an int, or a tuple of those")


def decode_tag(data: Any) -> Hashable:
    r"""Inverse of :func:`encode_tag`.

    Example:
        >>> decode_tag({'tuple': ['block', 3]})
        ('block', 3)
    """

    if isinstance(data, str) or (isinstance(data, int) and not isinstance(data, bool)):
        return data
    if isinstance(data, dict) and list(data) == ["tuple"] and isinstance(data["tuple"], list):
        return tuple(decode_tag(t) for t in data["tuple"])
    raise ValueError(f"tag {data!r} is not a valid encoded tag")


def tree_arrays(tree: Any) -> Tuple[jtu.PyTreeDef, Dict[str, Any]]:
    r"""Flattens a tree into its definition (non-array leaves hidden in it) and its
    arrays by key path, shared positions pruned.

    Example:
        >>> treedef, arrays = tree_arrays({'w': jnp.ones(2), 'act': 'relu'})
        >>> list(arrays)
        ["['w']"]
    """

    treedef, arrays = partition(mask(tree, warn=False))
    return treedef, arrays


@functools.lru_cache(maxsize=64)
def _structure(treedef: jtu.PyTreeDef) -> Tuple[Tuple[TieInfo, ...], Tuple[Tuple[str, Any], ...]]:
    r"""The ties and the JSON-encodable non-array leaves of a masked tree definition
    (from :func:`tree_arrays`): they are part of its structure, so a structure saved or
    loaded again, as in training, is walked once rather than at each call."""

    tree = skeleton(treedef)
    ties = tuple(TieInfo(t.scope, t.tag, t.path, tuple(t.aliases)) for t in tree_ties(tree))
    statics = []
    for path, leaf in jtu.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, Static)):
        if isinstance(leaf, Static) and not is_array(leaf.value) and _is_json(leaf.value):
            statics.append((jtu.keystr(path), leaf.value))
    return ties, tuple(statics)


def structure_ties(treedef: jtu.PyTreeDef) -> List[TieInfo]:
    r"""The ties declared in a tree, from its definition as :func:`tree_arrays` returns it.

    Example:
        >>> p = nn.Parameter(jnp.ones(2))
        >>> treedef, _ = tree_arrays(nn.Scope(a=nn.Reference('p', p), b=nn.Reference('p', p)))
        >>> structure_ties(treedef)
        [TieInfo(scope='', tag='p', path='.a', aliases=['.b'])]
    """

    return [TieInfo(t.scope, t.tag, t.path, list(t.aliases)) for t in _structure(treedef)[0]]


def structure_statics(treedef: jtu.PyTreeDef) -> Dict[str, Any]:
    r"""The non-array leaves of a tree that JSON can hold (strings, numbers, booleans,
    None) by key path, from its definition as :func:`tree_arrays` returns it.

    Example:
        >>> treedef, _ = tree_arrays({'w': jnp.ones(2), 'act': 'relu', 'f': print})
        >>> structure_statics(treedef)
        {"['act']": 'relu'}
    """

    return dict(_structure(treedef)[1])


def is_json(x: Any) -> bool:
    r"""Whether :py:`x` is a JSON value that reads back equal and of the same types.

    Exact types only: tuples would read back as lists, NumPy scalars as Python ones.

    Example:
        >>> is_json({'epoch': 2, 'files': ['a', 'b'], 'lr': 1e-3}), is_json((1, 2))
        (True, False)
    """

    if x is None or type(x) in (bool, int, float, str):
        return True
    if type(x) is list:
        return all(is_json(v) for v in x)
    if type(x) is dict:
        return all(type(k) is str and is_json(v) for k, v in x.items())
    return False


def _is_json(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, str)):
        return True
    if isinstance(x, float):
        return math.isfinite(x)
    return False


def array_info(key: str, x: Any) -> ArrayInfo:
    r"""Describes a concrete array (its checksum is filled in when it is written)."""

    if isinstance(x, jax.ShapeDtypeStruct):
        raise TypeError(f"{key}: cannot save an abstract array ({x}); pass concrete arrays")
    dtype, shape = x.dtype, tuple(x.shape)
    if is_key_dtype(dtype):
        impl = str(jax.random.key_impl(x))
        if impl not in KEY_IMPLS:
            raise TypeError(f"{key}: PRNG key implementation {impl!r} cannot be saved")
        return ArrayInfo(str(dtype), shape, math.prod(shape) * math.prod(KEY_IMPLS[impl]) * 4, None, impl)
    try:
        name = dtype_name(dtype)
    except TypeError as e:
        raise TypeError(f"{key}: {e}") from None
    return ArrayInfo(name, shape, math.prod(shape) * DTYPES[name].itemsize)


def library_versions() -> Dict[str, str]:
    return {
        "inox_io": __version__,
        "inox": inox.__version__,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def build(tree: Any, metadata: Mapping[str, Any] | None = None) -> Tuple[Manifest, Dict[str, Any]]:
    r"""Builds the manifest of a tree and returns it with the arrays to store.

    The same array object at several positions without a :class:`inox.nn.Reference`
    (implicit sharing) is stored once; its other positions are recorded as aliases and
    a warning names them.

    Raises:
        TypeError: for tags, dtypes or metadata that cannot be saved.
    """

    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not isinstance(k, str) or not is_json(v):
            raise TypeError(f"metadata must map str to JSON values (str, int, float, bool, None, lists, dicts), found {k!r}: {v!r}")

    treedef, positions = tree_arrays(tree)
    arrays: Dict[str, Any] = {}
    aliases: Dict[str, str] = {}
    first: Dict[int, str] = {}
    for key, x in positions.items():
        if id(x) in first:
            aliases[key] = first[id(x)]
        else:
            first[id(x)] = key
            arrays[key] = x

    if aliases:
        groups: Dict[str, List[str]] = {}
        for alias, key in aliases.items():
            groups.setdefault(key, [key]).append(alias)
        listing = "; ".join(" = ".join(g) for g in groups.values())
        warnings.warn(
            f"the same array sits at several positions without a Reference ({listing}); "
            "it is stored once and restored shared. Declare the tie with inox.nn.Reference "
            "inside an inox.nn.Scope to make it explicit.",
            stacklevel=3,
        )

    ties = structure_ties(treedef)
    for t in ties:
        try:
            encode_tag(t.tag)
        except TypeError as e:
            raise TypeError(f"{t.path}: {e}") from None

    infos = {key: array_info(key, x) for key, x in arrays.items()}
    manifest = Manifest(infos, ties, aliases, structure_statics(treedef), metadata, library_versions())
    return manifest, arrays
