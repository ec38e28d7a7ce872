r"""Saving and loading trees: the public functions of :mod:`inox_io`."""

from __future__ import annotations

__all__ = ["save", "load", "inspect", "verify", "convert", "abstract"]

import contextlib
import gc
import jax
import os
import threading

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping

from inox.tree import mask, unmask

from .errors import CheckpointError, damage_error
from .fit import Shardings, fit
from .formats import Format, Reader, format_of, open_checkpoint, read_in_ranges, write_options
from .manifest import Manifest, build
from .names import Keep, Names, Transforms, name_arrays
from .storage import reading, writing

PyTree = Any

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
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    names: Names | None = None,
    keep: Keep | None = None,
    transforms: Transforms | None = None,
    max_shard_size: int | str | None = None,
    format: str | None = None,
) -> Manifest:
    r"""Saves a tree, each shared array once, with its manifest.

    The format follows the path: ``*.safetensors``, ``*.msgpack``, or a directory (a
    path without suffix: a sharded directory, each process writing its own shards, or
    with :py:`format="orbax"` an orbax checkpoint; see ``docs/format.md``). The
    checkpoint is written atomically: a crash leaves the previous one or the new one,
    never a partial one. The caller's tree is not modified.

    Arguments:
        path: The checkpoint's path, or its ``gs://bucket/...`` or ``s3://bucket/...`` URL
            (see ``docs/guide.md``, "Checkpoints on object storage").
        tree: A tree of arrays (modules, dicts, lists, ...).
        metadata: User metadata: names and JSON values (strings, numbers, booleans,
            None, lists, dicts), kept in the manifest; exports with :py:`names`
            also write the string values as plain safetensors ``__metadata__``.
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
        format: The format by name (``"sharded"``, ``"orbax"``, ...), for a path that
            several formats take (directories); by default, the path's (an existing
            directory keeps its layout).

    Returns:
        The manifest written.

    Raises:
        FileExistsError: if the path exists and :py:`overwrite` is false.
        TypeError: for tags, dtypes or metadata that cannot be saved.
        ValueError: for a :py:`format` that does not take such paths.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + '/tree.safetensors'
        >>> manifest = save(path, {'w': jnp.ones(3), 'act': 'relu'}, metadata={'step': 10})
        >>> list(manifest.arrays), manifest.metadata
        (["['w']"], {'step': 10})
    """

    with writing(path, overwrite=overwrite, collective=lambda local: format_of(local, format).collective) as path:
        fmt = format_of(path, format)
        options = write_options(fmt, path, max_shard_size=max_shard_size)
        _writable_parent(path)
        with _paused_gc():
            manifest, arrays = build(tree, metadata)
            manifest, arrays, extra = name_arrays(manifest, arrays, names=names, keep=keep, transforms=transforms)
            fmt.write(path, manifest, arrays, overwrite=overwrite, extra=extra, **options)
    return manifest


def _writable_parent(path: Path) -> None:
    r"""Refuses a target whose folder does not exist, naming the path the caller gave
    (not a layout's temporary beside it).

    Raises:
        FileNotFoundError: if the parent directory of :py:`path` is missing.
    """

    if not path.parent.is_dir():
        what = "is not a directory" if path.parent.exists() else "does not exist"
        raise FileNotFoundError(f"{path}: not saved, its parent directory {path.parent} {what}")


def load(
    path: str | os.PathLike,
    like: PyTree | None = None,
    *,
    strict: bool = True,
    verify: bool = True,
    shardings: Shardings = None,
    names: Names | None = None,
    transforms: Transforms | None = None,
    statics: str = "like",
    max_expansion: float | None = None,
) -> PyTree:
    r"""Loads a checkpoint into the structure of :py:`like`.

    The result has the structure and non-array leaves of :py:`like` and the arrays of
    the file; every tied position holds the same array object. Without :py:`like`, it
    is a flat dictionary of every position the file knows: its stored keys and the
    aliases of its ties (a tie's positions hold one array object), and its JSON leaves;
    a ``like`` is what rebuilds modules.

    Arguments:
        path: The checkpoint's path, or its ``gs://bucket/...`` or ``s3://bucket/...`` URL
            (see ``docs/guide.md``, "Checkpoints on object storage").
        like: A tree of the same structure, with concrete or abstract
            (:class:`jax.ShapeDtypeStruct`) arrays; see :func:`abstract`. An abstract
            array where the file holds a number takes the file's number.
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
        statics: Where the non-array leaves (hyper-parameters, counters, names) come
            from when the file's and :py:`like`'s differ: ``"like"`` (with a warning
            naming each) or ``"file"`` (the file's JSON values).
        max_expansion: For untrusted checkpoints in a compressed layout (the orbax
            directory), the most bytes of arrays the load may allocate per byte of the
            files storing them; a checkpoint declaring more is refused before anything
            is read. Raw layouts never declare more than their files hold. A :py:`like`
            bounds what a load allocates too: it is what the file must fit.

    Raises:
        CheckpointError: if the file is damaged or does not fit :py:`like`, naming every
            differing path, or declares more than :py:`max_expansion` allows.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + '/tree.msgpack'
        >>> w = jnp.arange(3.0)
        >>> _ = save(path, {'a': w, 'act': 'relu'})
        >>> load(path, {'a': jax.ShapeDtypeStruct((3,), jnp.float32), 'act': 'relu'})
        {'a': Array([0., 1., 2.], dtype=float32), 'act': 'relu'}
        >>> load(path, {'a': w, 'act': 'gelu'}, statics='file')['act']
        'relu'
        >>> load(path)
        {"['a']": Array([0., 1., 2.], dtype=float32), "['act']": 'relu'}
    """

    with _paused_gc(), reading(path, in_ranges=read_in_ranges) as local, open_checkpoint(local) as reader:
        found = fit(reader, like, names=names, transforms=transforms)
        found.report(strict=strict, stacklevel=2, statics=statics)
        targets = found.targets(shardings)
        if max_expansion is not None:
            _within_expansion(reader, targets, max_expansion)
        arrays = reader.load(targets, verify=verify)
    return found.rebuild(arrays, statics)


def _within_expansion(reader: Reader, keys: Iterable[str], max_expansion: float) -> None:
    r"""Refuses a compressed checkpoint whose arrays :py:`keys` declare more than
    :py:`max_expansion` bytes per byte of the files storing them."""

    stored = reader.compressed_bytes()
    declared = sum(reader.manifest.arrays[key].nbytes for key in keys)
    if stored is not None and declared > max_expansion * stored:
        raise CheckpointError(
            reader.path,
            f"declares {declared} bytes of arrays stored in {stored} bytes of files, more than "
            f"max_expansion={max_expansion:g} times: an untrusted file is refused; pass a larger "
            "max_expansion if the data is known to compress this well (zeros do)",
        )


def inspect(path: str | os.PathLike) -> Manifest:
    r"""Reads the manifest of a checkpoint, without reading its arrays (at a ``gs://`` or
    ``s3://`` URL, its files are fetched all the same: see ``docs/format.md``).

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + '/tree.safetensors'
        >>> _ = save(path, {'w': jnp.ones((2, 3), jnp.bfloat16)})
        >>> inspect(path).arrays
        {"['w']": ArrayInfo(dtype='bfloat16', shape=(2, 3), nbytes=12, crc32='...', key_impl=None)}
    """

    with reading(path, in_ranges=read_in_ranges) as local, open_checkpoint(local) as reader:
        return reader.manifest


def _verify_all(reader: Reader, progress: Progress | None) -> Dict[str, str]:
    r"""Verifies every array; one at a time when progress is reported."""

    if progress is None:
        return reader.verify()
    total, done, problems = reader.manifest.nbytes, 0, {}
    progress("verify", 0, total)
    for key, info in reader.manifest.arrays.items():
        problems.update(reader.verify([key]))
        done += info.nbytes
        progress("verify", done, total)
    return problems


def verify(path: str | os.PathLike, *, progress: Progress | None = None) -> Manifest:
    r"""Reads every array of a checkpoint and checks it against its checksum.

    Arguments:
        path: The checkpoint's path, or its ``gs://bucket/...`` or ``s3://bucket/...`` URL
            (see ``docs/guide.md``, "Checkpoints on object storage").
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

    with reading(path, in_ranges=read_in_ranges) as local, open_checkpoint(local) as reader:
        problems = _verify_all(reader, progress)
        if problems:
            raise damage_error(reader.path, problems, "damaged:")
        return reader.manifest


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    names: Names | None = None,
    keep: Keep | None = None,
    format: str | None = None,
) -> Manifest:
    r"""Converts a checkpoint to another format, manifest (ties, metadata) kept.

    The source is verified first, so damage is never copied. :py:`progress`, if given,
    is called as :py:`progress(stage, done, total)` through the "verify" then the
    "write" stage, as the bytes are written. With :py:`names` (and :py:`keep`), the
    arrays are renamed as :func:`save` does, e.g. for PyTorch (``inox-io convert
    --names torch``). :py:`format` chooses among the formats of :py:`dst` as in
    :func:`save` (``"orbax"`` for a directory). Either may be a ``gs://`` or ``s3://``
    URL, as in :func:`save` and :func:`load`.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = save(folder + '/a.msgpack', {'w': jnp.ones(2)})
        >>> list(convert(folder + '/a.msgpack', folder + '/a.safetensors').arrays)
        ["['w']"]
    """

    with writing(dst, overwrite=overwrite, collective=lambda local: format_of(local, format).collective) as dst:
        fmt = format_of(dst, format)
        _writable_parent(dst)
        with reading(src, in_ranges=read_in_ranges) as local, open_checkpoint(local) as reader:
            return _convert(reader, dst, fmt, overwrite, progress, names, keep)


def _convert(
    reader: Reader, dst: Path, fmt: Format, overwrite: bool, progress: Progress | None, names: Names | None,
    keep: Keep | None,
) -> Manifest:
    r"""Writes what :py:`reader` holds at :py:`dst` in :py:`fmt`, verified first;
    returns the manifest written."""

    problems = _verify_all(reader, progress)
    if problems:
        raise damage_error(reader.path, problems, "damaged, not converted:")
    manifest = reader.manifest.fresh()  # the writer computes its layout's checksums
    arrays: Mapping[str, Any] = {key: reader.host(key) for key in manifest.arrays}
    manifest, arrays, extra = name_arrays(manifest, arrays, names=names, keep=keep)

    def wrote(done: int) -> None:
        progress("write", done, manifest.nbytes)

    if progress is not None:
        progress("write", 0, manifest.nbytes)
    fmt.write(dst, manifest, arrays, overwrite=overwrite, extra=extra, progress=None if progress is None else wrote)
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
        Linear(
          bias = Parameter(float32[5]),
          weight = Parameter(float32[3, 5])
        )
        >>> type(like.weight.value).__name__
        'ShapeDtypeStruct'
    """

    def build_masked(dynamic: PyTree) -> PyTree:
        a, k = unmask(dynamic)
        return mask(fn(*a, **k), warn=False)

    # Masked for eval_shape, not for a compilation that could recur: no warnings.
    return unmask(jax.eval_shape(build_masked, mask((args, kwargs), warn=False)))
