r"""Saving and loading under stored names (PyTorch, Hugging Face): the machinery behind
the :py:`names`, :py:`keep`, :py:`transforms` and :py:`max_shard_size` arguments of
:func:`inox_io.save` and :func:`inox_io.load` (see ``docs/interop.md``).

A file saved with names is keyed by names: its manifest lists each shared array once,
under its kept name, and each dropped name as an alias of the kept one. Loading with
names looks each array of ``like`` up under the names of all its positions, so a tied
array is found under whichever name the file kept; the ties come from ``like``.

Example:
    >>> import tempfile
    >>> emb = nn.Parameter(jnp.arange(6.0).reshape(3, 2))
    >>> tree = nn.Scope(head=nn.Reference('e', emb), wte=nn.Reference('e', emb))
    >>> path = tempfile.mkdtemp() + '/model.safetensors'
    >>> _ = inox_io.save(path, tree, names=inox_io.torch_names, keep=['wte'])
    >>> from safetensors import safe_open
    >>> with safe_open(path, 'np') as f:
    ...     list(f.keys()), f.metadata()['head']
    (['wte'], 'wte')
    >>> restored = inox_io.load(path, tree, names=inox_io.torch_names)
    >>> restored.head is restored.wte
    True
"""

from __future__ import annotations

__all__ = ["save_named", "load_named", "name_arrays", "write"]

import collections.abc
import jax
import jax.tree_util as jtu
import numpy as np
import os

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

from inox.tree import combine, unmask

from .dtypes import dtype_name, is_key_dtype
from .errors import CheckpointError
from .formats import format_for
from .formats.base import Format, Reader, Target, place
from .formats.hf_index import INDEX_SUFFIX, HFIndexFormat
from .manifest import FORMAT, ArrayInfo, Manifest, build, structure_ties, tree_arrays
from .names import Keep, Names, Transforms, find_transform, name_positions, rename

PyTree = Any


class _Stored(collections.abc.Mapping):
    r"""The arrays to write, by stored key: renamed and transformed when asked for.

    Writers ask for one array at a time, so at most one transformed copy lives at once
    (besides those whose shape could only be found by computing them).
    """

    def __init__(self, arrays: Mapping[str, Any], source: Mapping[str, str], fns: Mapping[str, Callable]):
        self.arrays, self.source, self.fns = arrays, source, fns
        self.computed: Dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self.computed:
            return self.computed.pop(key)
        x = self.arrays[self.source[key]]
        return self.fns[key](x) if key in self.fns else x

    def __iter__(self):
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)


def _describe_output(key: str, x: Any, fn: Callable, stored: _Stored) -> ArrayInfo:
    r"""The stored dtype and shape of a transformed array, without computing it when the
    transform traces with JAX."""

    if is_key_dtype(x.dtype):
        raise TypeError(f"{key}: PRNG key arrays cannot be transformed")
    try:
        if jax.dtypes.canonicalize_dtype(x.dtype) != x.dtype:
            raise TypeError  # 64-bit data without jax_enable_x64: tracing would narrow it
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception:  # a NumPy-only function: compute it once, written later
        out = stored.computed[key] = fn(x)
    return ArrayInfo(dtype_name(out.dtype), tuple(out.shape), int(np.prod(out.shape)) * np.dtype(out.dtype).itemsize)


def name_arrays(
    manifest: Manifest,
    arrays: Mapping[str, Any],
    *,
    names: Names | None,
    keep: Keep | None = None,
    transforms: Transforms | None = None,
) -> Tuple[Manifest, Mapping[str, Any], Dict[str, str]]:
    r"""Moves a manifest and its arrays to stored names and transforms the arrays.

    Returns:
        The manifest to write, the arrays by stored key, and the extra ``__metadata__``
        entries of a safetensors file: the dropped names (``dropped -> kept``) and,
        with names, the user metadata.
    """

    if names is None:
        if keep is not None:
            raise ValueError("keep chooses among the names of a shared array: pass names too")
        named, source, extra = manifest, {key: key for key in manifest.arrays}, {}
    else:
        renamed = rename(manifest, names, keep)
        named, source = renamed.manifest, renamed.source
        extra = dict(renamed.dropped)
        for key, value in manifest.metadata.items():
            if key in extra or key == FORMAT:
                raise ValueError(f"metadata {key!r} clashes with the name of a dropped array or with {FORMAT!r}")
            extra[key] = value

    fns = {key: pair[0] for key in source if (pair := find_transform(transforms, key))}
    stored = _Stored(arrays, source, fns)
    for key, fn in fns.items():
        named.arrays[key] = _describe_output(key, arrays[source[key]], fn, stored)
    return named, stored, extra


def write(
    fmt: Format,
    path: Path,
    manifest: Manifest,
    arrays: Mapping[str, Any],
    extra: Mapping[str, str],
    *,
    overwrite: bool,
    max_shard_size: int | str | None = None,
) -> None:
    r"""Writes with the extra ``__metadata__`` entries where the format has a place for
    them (safetensors files and shards); :py:`max_shard_size` is for sharded indices."""

    if isinstance(fmt, HFIndexFormat):
        fmt.write_with_metadata(path, manifest, arrays, extra, overwrite=overwrite, max_shard_size=max_shard_size)
    elif max_shard_size is not None:
        raise ValueError(f"{path}: max_shard_size is for sharded checkpoints, paths ending in {INDEX_SUFFIX!r}")
    elif extra and hasattr(fmt, "write_with_metadata"):
        fmt.write_with_metadata(path, manifest, arrays, extra, overwrite=overwrite)
    else:
        fmt.write(path, manifest, arrays, overwrite=overwrite)


def save_named(
    path: str | os.PathLike,
    tree: PyTree,
    *,
    names: Names | None,
    keep: Keep | None,
    transforms: Transforms | None,
    metadata: Mapping[str, str] | None,
    overwrite: bool,
    max_shard_size: int | str | None,
) -> Manifest:
    r""":func:`inox_io.save` with names, transforms or a shard size."""

    path = Path(path)
    fmt = format_for(path)
    if max_shard_size is not None and not isinstance(fmt, HFIndexFormat):
        raise ValueError(f"{path}: max_shard_size is for sharded checkpoints, paths ending in {INDEX_SUFFIX!r}")
    manifest, arrays = build(tree, metadata)
    manifest, arrays, extra = name_arrays(manifest, arrays, names=names, keep=keep, transforms=transforms)
    write(fmt, path, manifest, arrays, extra, overwrite=overwrite, max_shard_size=max_shard_size)
    return manifest


def _identity(path: str) -> str:
    return path


def file_names(reader: Reader, names: Names) -> Dict[str, str]:
    r"""Every name under which the file holds an array -> its stored key: the stored
    keys, the aliases of its manifest, the ``dropped -> kept`` entries of its
    ``__metadata__`` (as :func:`safetensors.torch.save_model` writes), and the names of
    the key paths of a file saved without names."""

    manifest = reader.manifest
    found = manifest.positions()
    for dropped, kept in getattr(reader, "metadata", {}).items():
        if dropped not in found and kept in manifest.arrays:
            found[dropped] = kept
    for position, key in list(found.items()):
        if position[:1] in (".", "["):  # a key path, not a name
            found.setdefault(names(position), key)
    return found


def _like_positions(treedef: jtu.PyTreeDef, preserved: Mapping[str, Any]) -> Dict[str, str]:
    r"""Every array position of a tree (:func:`tree_arrays`' definition and arrays),
    pruned ones included -> its preserved position."""

    # Manifest.positions() reads only the keys of the arrays: no ArrayInfo is needed.
    return Manifest(dict.fromkeys(preserved), structure_ties(treedef)).positions()  # type: ignore[arg-type]


def _read(reader: Reader, key: str, transforms: Transforms | None) -> Tuple[ArrayInfo, np.ndarray]:
    r"""A stored array on the host (a memory-mapped view where the format allows), after
    its transform, with the description of what :func:`place` gets."""

    info, view = reader.manifest.arrays[key], reader.host(key)
    pair = find_transform(transforms, key)
    if pair is None or info.key_impl:
        return info, view
    out = np.asarray(pair[1](view))
    return ArrayInfo(dtype_name(out.dtype), tuple(out.shape), out.nbytes), out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    # Bitwise: a tied array stored twice holds the same bytes twice (NaNs included).
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def load_named(
    path: str | os.PathLike,
    like: PyTree,
    *,
    names: Names | None,
    transforms: Transforms | None,
    strict: bool,
    verify: bool,
    shardings: Any,
) -> PyTree:
    r""":func:`inox_io.load` with names or transforms."""

    from .api import _describe, _leaf_description, _resolve_shardings, report_fit

    path = Path(path)
    fmt = format_for(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    names = names or _identity

    reader = fmt.open(path)
    try:
        found = file_names(reader, names)
        treedef, preserved = tree_arrays(like)
        positions = _like_positions(treedef, preserved)
        groups = name_positions(positions, names)

        problems: List[str] = []
        hits: Dict[str, List[str]] = {}  # like key -> stored keys found, first chosen
        for key, group in groups.items():
            stored = list(dict.fromkeys(found[name] for name, _ in group if name in found))
            if stored:
                hits[key] = stored
            else:
                problems.append(f"{key}: missing from the file (as {' or '.join(repr(n) for n, _ in group)})")
        used = {k for stored in hits.values() for k in stored}
        if verify:
            damaged = reader.verify(sorted(used))
            if damaged:
                raise CheckpointError(path, "; ".join(p.split(": ", 1)[1] for p in damaged))

        chosen: Dict[str, Tuple[ArrayInfo, np.ndarray]] = {}
        for key, stored in hits.items():
            info, view = _read(reader, stored[0], transforms)
            for other in stored[1:]:
                if not _same(view, _read(reader, other, transforms)[1]):
                    problems.append(f"{key}: tied in like, but the file holds {stored[0]} and {other} with different values")
            dtype, shape = _leaf_description(preserved[key])
            if (dtype, shape) != (info.dtype, info.shape):
                problems.append(f"{key}: {dtype}{list(shape)} expected, {_describe(info)} found (as {stored[0]})")
                continue
            chosen[key] = (info, view)

        unexpected = [k for k in reader.manifest.arrays if k not in used]
        report_fit(path, problems, unexpected, strict=strict, stacklevel=3)

        owners: Dict[str, List[str]] = {}
        for position, key in sorted(positions.items(), key=lambda item: item[0] != item[1]):
            if key in chosen:
                owners.setdefault(key, []).append(position)
        like_leaves = {p: preserved[key] for key, ps in owners.items() for p in ps}
        placement = _resolve_shardings(shardings, like_leaves, owners)
        arrays = {key: place(info, view, Target(placement[key])) for key, (info, view) in chosen.items()}
    finally:
        reader.close()

    values = {p: arrays.get(p, leaf) for p, leaf in preserved.items()}
    return unmask(combine(treedef, values))
