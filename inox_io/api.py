r"""Saving and loading trees: the public functions of :mod:`inox_io`."""

from __future__ import annotations

__all__ = ["save", "load", "inspect", "verify", "convert", "abstract"]

import collections.abc
import contextlib
import gc
import jax
import jax.tree_util as jtu
import os
import threading
import warnings

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

from inox.tree import Static, combine, mask, unmask

from .dtypes import NAMES, is_key_dtype
from .errors import CheckpointError
from .formats import format_for
from .formats.base import Reader, Target
from .manifest import ArrayInfo, Manifest, build, structure_ties, tree_arrays
from .interop import load_named, name_arrays, save_named, write as write_named
from .names import Keep, Names, Transforms

PyTree = Any
Shardings = jax.sharding.Sharding | PyTree | Callable[[str, Any], jax.sharding.Sharding | None] | None

#: Called as :py:`progress(stage, done, total)`, in bytes; stage is "verify" or "write".
Progress = Callable[[str, int, int], None]


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _paused_gc():
    r"""Pauses Python's cyclic garbage collector, as msgpack advises for large decodes.

    A save or load of thousands of arrays allocates enough small objects to trigger
    full collections, each walking every object of the process (JAX's are many): they
    took 40% of loading 2,000 arrays. Nesting and threads are counted, so the collector
    resumes when the last user leaves, if it ran before the first came. Nothing is
    leaked: reference counting still frees everything that is not in a cycle.
    """

    global _gc_users, _gc_was_enabled
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


def save(
    path: str | os.PathLike,
    tree: PyTree,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    names: Names | None = None,
    keep: Keep | None = None,
    transforms: Transforms | None = None,
    max_shard_size: int | str | None = None,
) -> Manifest:
    r"""Saves a tree, each shared array once, with its manifest.

    The format follows the path: ``*.safetensors``, ``*.msgpack``, or a directory (a
    path without suffix: the arrays as an orbax checkpoint, each process writing its own
    shards; see ``docs/format.md``). The checkpoint is written atomically: a crash
    leaves the previous one or the new one, never a partial one. The caller's tree is
    not modified.

    Arguments:
        path: The checkpoint's path.
        tree: A tree of arrays (modules, dicts, lists, ...).
        metadata: User metadata, string to string.
        overwrite: Whether to replace an existing checkpoint.
        names: Stores each array under :py:`names(key_path)` instead of its key path,
            e.g. :func:`inox_io.torch_names`; a shared array is stored once, under the
            name of one of its positions (see ``docs/interop.md``).
        keep: Which name of a shared array is stored: preferred names, or a function
            of the names returning one; by default, the preserved occurrence's.
        transforms: :py:`{pattern_or_predicate: (to_file, from_file)}`, by stored name:
            :py:`to_file` maps an array on its way to the file (:data:`inox_io.TRANSPOSE`).
        max_shard_size: For ``*.safetensors.index.json`` (sharded) checkpoints, the
            largest shard, in bytes or as ``"5GB"``.

    Returns:
        The manifest written.

    Raises:
        FileExistsError: if the path exists and :py:`overwrite` is false.
        TypeError: for tags, dtypes or metadata that cannot be saved.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + '/tree.safetensors'
        >>> manifest = save(path, {'w': jnp.ones(3), 'act': 'relu'}, metadata={'step': '10'})
        >>> list(manifest.arrays), manifest.metadata
        (["['w']"], {'step': '10'})
    """

    with _paused_gc():
        if (names, keep, transforms, max_shard_size) != (None, None, None, None):
            options = dict(names=names, keep=keep, transforms=transforms, max_shard_size=max_shard_size)
            return save_named(path, tree, metadata=metadata, overwrite=overwrite, **options)

        path = Path(path)
        fmt = format_for(path)
        manifest, arrays = build(tree, metadata)
        fmt.write(path, manifest, arrays, overwrite=overwrite)
        return manifest


def _target_sharding(leaf: Any) -> jax.sharding.Sharding | None:
    if isinstance(leaf, (jax.ShapeDtypeStruct, jax.Array)):
        return getattr(leaf, "sharding", None)
    return None


def _keyed_shardings(shardings: PyTree) -> Dict[str, Any]:
    def is_leaf(x: Any) -> bool:
        return isinstance(x, (jax.sharding.Sharding, Static))

    out = {}
    for path, leaf in jtu.tree_leaves_with_path(shardings, is_leaf=is_leaf):
        leaf = leaf.value if isinstance(leaf, Static) else leaf
        if isinstance(leaf, jax.sharding.Sharding):
            out[jtu.keystr(path)] = leaf
    return out


def _resolve_shardings(
    shardings: Shardings,
    like: Mapping[str, Any],
    owners: Mapping[str, List[str]],
) -> Dict[str, jax.sharding.Sharding | None]:
    r"""The sharding of every stored key, from :py:`shardings` or from the ``like``
    leaves; all positions of one stored key must agree."""

    fallback: Callable[[Any], jax.sharding.Sharding | None] = lambda leaf: None
    if shardings is None:
        def choose(position: str, leaf: Any):
            return _target_sharding(leaf)
    elif isinstance(shardings, jax.sharding.Sharding):
        def choose(position: str, leaf: Any):
            return shardings
    elif callable(shardings) and jtu.all_leaves([shardings]):  # a function, not a tree (a model may be callable)
        choose = shardings
    else:
        keyed = _keyed_shardings(shardings)

        # A tied Scope prunes its aliases from the shardings tree too: a missing
        # position has no opinion; like's sharding serves when no position has one.
        def choose(position: str, leaf: Any):
            return keyed.get(position)

        fallback = _target_sharding

    out = {}
    for stored, positions in owners.items():
        leaf = like[positions[0]]
        chosen = [(p, choose(p, leaf)) for p in positions]
        first_position, first = chosen[0]
        for position, sharding in chosen[1:]:
            if sharding is not None and first is not None and sharding != first:
                raise ValueError(
                    f"tied positions {first_position} and {position} ask for different shardings "
                    f"({first} and {sharding}); a tied array is placed once"
                )
            first = first if first is not None else sharding
        out[stored] = first if first is not None else fallback(leaf)
    return out


def _describe(info: ArrayInfo) -> str:
    return f"{info.dtype}{list(info.shape)}"


def _leaf_description(leaf: Any) -> Tuple[str, Tuple[int, ...]]:
    dtype = leaf.dtype
    name = NAMES.get(dtype) or (str(dtype) if is_key_dtype(dtype) else jax.numpy.dtype(dtype).name)
    return name, tuple(leaf.shape)


def _check_ties(manifest: Manifest, like_treedef: jtu.PyTreeDef) -> List[str]:
    r"""How the ties of the file and those of ``like`` (whose definition, from
    :func:`inox_io.manifest.tree_arrays`, is :py:`like_treedef`) differ."""

    def table(ties) -> Dict[Tuple[str, str], List[str]]:
        return {(t.scope, t.path): sorted(t.aliases) for t in ties}

    file_ties, like_ties = table(manifest.ties), table(structure_ties(like_treedef))
    problems = []
    for scope, path in sorted(set(file_ties) | set(like_ties)):
        found, expected = file_ties.get((scope, path)), like_ties.get((scope, path))
        if found != expected:
            problems.append(
                f"{path}: tied to {expected or 'nothing'} in like, to {found or 'nothing'} in the file"
            )
    return problems


def report_fit(path: Path, problems: List[str], unexpected: List[str], *, strict: bool, stacklevel: int) -> None:
    r"""Raises (strict) or warns about the ways a file does not fit ``like``.

    :py:`stacklevel` counts from the caller of this function, as for :func:`warnings.warn`.
    """

    if strict:
        problems = problems + [f"{k}: in the file but not in like" for k in unexpected]
        if problems:
            raise CheckpointError(path, "does not fit like:\n  " + "\n  ".join(problems))
    elif problems or unexpected:
        warnings.warn(
            f"{path}: loaded partially; "
            + "; ".join(problems + [f"{k}: in the file but not in like (ignored)" for k in unexpected]),
            stacklevel=stacklevel + 1,
        )


def load(
    path: str | os.PathLike,
    like: PyTree,
    *,
    strict: bool = True,
    verify: bool = True,
    shardings: Shardings = None,
    names: Names | None = None,
    transforms: Transforms | None = None,
) -> PyTree:
    r"""Loads a checkpoint into the structure of :py:`like`.

    The result has the structure and non-array leaves of :py:`like` and the arrays of
    the file; every tied position holds the same array object.

    Arguments:
        path: The checkpoint's path.
        like: A tree of the same structure, with concrete or abstract
            (:class:`jax.ShapeDtypeStruct`) arrays; see :func:`abstract`.
        strict: Whether missing, unexpected or mismatched arrays and ties are errors.
            When false, they are reported in a warning, and positions that could not be
            loaded keep the leaf of :py:`like`.
        verify: Whether to verify the checksums of the arrays read.
        shardings: Where to place the arrays: one sharding for all, a tree of shardings
            shaped like :py:`like`, or a function :py:`(path, leaf) -> sharding`. By
            default, the sharding of each :py:`like` leaf, else the default device.
        names: Looks each array up under :py:`names(key_path)` of any of its positions
            (e.g. :func:`inox_io.torch_names`), in files written by other tools too; the
            ties come from :py:`like` (see ``docs/interop.md``).
        transforms: :py:`{pattern_or_predicate: (to_file, from_file)}`, by stored name:
            :py:`from_file` maps a stored (NumPy) array on its way in.

    Raises:
        CheckpointError: if the file is damaged or does not fit :py:`like`, naming every
            differing path.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + '/tree.msgpack'
        >>> w = jnp.arange(3.0)
        >>> _ = save(path, {'a': w, 'act': 'relu'})
        >>> load(path, {'a': jax.ShapeDtypeStruct((3,), jnp.float32), 'act': 'gelu'})
        {'a': Array([0., 1., 2.], dtype=float32), 'act': 'gelu'}
    """

    with _paused_gc():
        if names is not None or transforms is not None:
            options = dict(strict=strict, verify=verify, shardings=shardings)
            return load_named(path, like, names=names, transforms=transforms, **options)
        return _load(Path(path), like, strict=strict, verify=verify, shardings=shardings)


def _load(path: Path, like: PyTree, *, strict: bool, verify: bool, shardings: Shardings) -> PyTree:
    r"""Loads with the manifest's own keys (see :func:`load`)."""

    fmt = format_for(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")

    reader = fmt.open(path)
    try:
        manifest = reader.manifest
        treedef, positions = tree_arrays(like)
        stored_of = manifest.positions()

        problems = _check_ties(manifest, treedef)
        missing, owners, mismatched = [], {}, set()
        for position, leaf in positions.items():
            stored = stored_of.get(position)
            if stored is None:
                missing.append(position)
                continue
            info = manifest.arrays[stored]
            dtype, shape = _leaf_description(leaf)
            if (dtype, shape) != (info.dtype, info.shape):
                problems.append(f"{position}: {dtype}{list(shape)} expected, {_describe(info)} found")
                mismatched.add(stored)
                continue
            owners.setdefault(stored, []).append(position)

        # Positions pruned from like by its ties still choose their sharding.
        for position, stored in stored_of.items():
            if stored in owners and position not in positions:
                owners[stored].append(position)
        like_leaves = {p: positions[ps[0]] for ps in owners.values() for p in ps}

        problems += [f"{p}: missing from the file" for p in missing]
        # A mismatched array is reported once, as such, not also as unexpected.
        unexpected = [key for key in manifest.arrays if key not in owners and key not in mismatched]
        report_fit(path, problems, unexpected, strict=strict, stacklevel=3)

        placement = _resolve_shardings(shardings, like_leaves, owners)
        arrays = reader.load({key: Target(placement[key]) for key in owners}, verify=verify)
    finally:
        reader.close()

    values = {}
    for position, leaf in positions.items():
        stored = stored_of.get(position)
        values[position] = arrays[stored] if stored in arrays else leaf
    return unmask(combine(treedef, values))


def inspect(path: str | os.PathLike) -> Manifest:
    r"""Reads the manifest of a checkpoint, without reading its arrays.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + '/tree.safetensors'
        >>> _ = save(path, {'w': jnp.ones((2, 3), jnp.bfloat16)})
        >>> inspect(path).arrays
        {"['w']": ArrayInfo(dtype='bfloat16', shape=(2, 3), nbytes=12, crc32='...', key_impl=None)}
    """

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    with format_for(path).open(path) as reader:
        return reader.manifest


def _verify_all(reader: Reader, progress: Progress | None) -> List[str]:
    r"""Verifies every array; one at a time when progress is reported."""

    if progress is None:
        return reader.verify()
    total, done, problems = reader.manifest.nbytes, 0, []
    progress("verify", 0, total)
    for key, info in reader.manifest.arrays.items():
        problems += reader.verify([key])
        done += info.nbytes
        progress("verify", done, total)
    return problems


class _Reporting(collections.abc.Mapping):
    r"""The arrays handed to a writer, reporting the bytes written so far.

    Writers ask for one array at a time, so when one is asked for, those asked for
    before are written.
    """

    def __init__(self, arrays: Mapping[str, Any], manifest: Manifest, progress: Progress):
        self.arrays, self.manifest, self.progress = arrays, manifest, progress
        self.asked: set = set()
        self.done = 0

    def __getitem__(self, key: str) -> Any:
        if key not in self.asked:
            self.progress("write", self.done, self.manifest.nbytes)
            self.asked.add(key)
            self.done += self.manifest.arrays[key].nbytes
        return self.arrays[key]

    def __iter__(self):
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def verify(path: str | os.PathLike, *, progress: Progress | None = None) -> Manifest:
    r"""Reads every array of a checkpoint and checks it against its checksum.

    Arguments:
        path: The checkpoint's path.
        progress: Called as :py:`progress("verify", done, total)` after each array.

    Returns:
        The manifest, if everything is intact.

    Raises:
        CheckpointError: listing every damaged array.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + '/tree.safetensors'
        >>> _ = save(path, {'a': jnp.ones(2), 'b': jnp.zeros(3)})
        >>> _ = verify(path, progress=lambda stage, done, total: print(stage, done, total))
        verify 0 20
        verify 8 20
        verify 20 20
    """

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    with format_for(path).open(path) as reader:
        problems = _verify_all(reader, progress)
        if problems:
            raise CheckpointError(path, "\n  ".join(["damaged:"] + [p.split(": ", 1)[1] for p in problems]))
        return reader.manifest


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    names: Names | None = None,
    keep: Keep | None = None,
) -> Manifest:
    r"""Converts a checkpoint to another format, manifest (ties, metadata) kept.

    The source is verified first, so damage is never copied. :py:`progress`, if given,
    is called as :py:`progress(stage, done, total)` through the "verify" then the
    "write" stage. With :py:`names` (and :py:`keep`), the arrays are renamed as
    :func:`save` does, e.g. for PyTorch (``inox-io convert --names torch``).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = save(folder + '/a.msgpack', {'w': jnp.ones(2)})
        >>> list(convert(folder + '/a.msgpack', folder + '/a.safetensors').arrays)
        ["['w']"]
    """

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such checkpoint")
    fmt = format_for(dst)
    with format_for(src).open(src) as reader:
        problems = _verify_all(reader, progress)
        if problems:
            raise CheckpointError(src, "\n  ".join(["damaged, not converted:"] + [p.split(": ", 1)[1] for p in problems]))
        manifest = reader.manifest
        arrays = {key: reader.host(key) for key in manifest.arrays}
        extra: Dict[str, str] = {}
        if names is not None or keep is not None:
            manifest, arrays, extra = name_arrays(manifest, arrays, names=names, keep=keep)
        if progress is not None:
            arrays = _Reporting(arrays, manifest, progress)
        write_named(fmt, dst, manifest, arrays, extra, overwrite=overwrite)
        if progress is not None:
            progress("write", manifest.nbytes, manifest.nbytes)
    return manifest


def abstract(fn: Callable[..., PyTree], *args: Any, **kwargs: Any) -> PyTree:
    r"""Like :func:`jax.eval_shape`, but keeps the non-array leaves (and so the ties) of
    the returned tree, and passes non-array arguments as they are.

    Nothing is computed or allocated: the result has :class:`jax.ShapeDtypeStruct`
    leaves, ready to be a ``like`` for :func:`load`.

    Example:
        >>> like = abstract(nn.Linear, 3, 5, key=jax.random.key(0))
        >>> like
        Linear(bias=Parameter(float32[5]), weight=Parameter(float32[3, 5]))
        >>> type(like.weight.value).__name__
        'ShapeDtypeStruct'
    """

    def build_masked(dynamic: PyTree) -> PyTree:
        a, k = unmask(dynamic)
        return mask(fn(*a, **k))

    return unmask(jax.eval_shape(build_masked, mask((args, kwargs))))
