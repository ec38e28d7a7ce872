r"""How a checkpoint fits a ``like`` tree: which stored array each position of ``like``
gets (by the file's key paths, or by stored names), what does not fit (shapes, dtypes,
ties, missing and unexpected arrays, differing hyper-parameters), and where each array
is placed. :func:`inox_io.load` is this module's :func:`fit`, then one batched read.

Example:
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + '/m.safetensors'
    >>> _ = inox_io.save(path, {'w': jnp.ones(2), 'b': jnp.ones(3)})
    >>> with inox_io.formats.open_checkpoint(path) as reader:
    ...     found = fit(reader, {'w': jnp.zeros(2), 'b': jnp.zeros(4)})
    >>> found.sources, found.problems
    ({"['w']": ["['w']"]}, ["['b']: float32[4] expected, float32[3] found"])
"""

from __future__ import annotations

__all__ = ["Shardings", "STATICS", "Fit", "fit", "abstract_leaf", "leaf_description"]

import dataclasses
import jax
import jax.tree_util as jtu
import numpy as np
import warnings

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

from inox.tree import Static, combine, unmask

from . import keypath
from .dtypes import DTYPES, NAMES, is_key_dtype
from .errors import CheckpointError
from .formats import Reader, Target
from .manifest import ArrayInfo, Manifest, structure_statics, structure_ties, tree_arrays
from .names import Names, Transforms, find_transform, name_positions, transformed_info

PyTree = Any

#: Where to place the arrays of a load: one sharding for all, a tree of shardings shaped
#: like the ``like``, or a function :py:`(path, leaf) -> sharding`; None for the
#: shardings of the ``like`` leaves (else the default device).
Shardings = jax.sharding.Sharding | PyTree | Callable[[str, Any], jax.sharding.Sharding | None] | None

#: Where the non-array leaves of a load come from when the file's and the like's differ.
STATICS = ("like", "file")


def leaf_description(leaf: Any) -> Tuple[str, Tuple[int, ...]]:
    r"""The manifest's dtype name and the shape of a ``like`` leaf.

    Example:
        >>> leaf_description(jax.ShapeDtypeStruct((2, 3), jnp.bfloat16))
        ('bfloat16', (2, 3))
    """

    dtype = leaf.dtype
    name = NAMES.get(dtype) or (str(dtype) if is_key_dtype(dtype) else jax.numpy.dtype(dtype).name)
    return name, tuple(leaf.shape)


def abstract_leaf(info: ArrayInfo) -> jax.ShapeDtypeStruct:
    r"""The :class:`jax.ShapeDtypeStruct` of a stored array, PRNG keys included.

    Example:
        >>> abstract_leaf(ArrayInfo('bfloat16', (2,), 4))
        ShapeDtypeStruct(shape=(2,), dtype=bfloat16)
        >>> abstract_leaf(ArrayInfo('key<fry>', (3,), 24, None, 'threefry2x32')).dtype
        key<fry>
    """

    if info.key_impl:
        dtype = jax.eval_shape(lambda: jax.random.key(0, impl=info.key_impl)).dtype
    else:
        dtype = DTYPES[info.dtype]
    return jax.ShapeDtypeStruct(info.shape, dtype)


def _describe(info: ArrayInfo) -> str:
    return f"{info.dtype}{list(info.shape)}"


@dataclasses.dataclass
class Fit:
    r"""A checkpoint matched against a ``like`` tree (see :func:`fit`)."""

    path: Path
    treedef: jtu.PyTreeDef  #: ``like``'s definition, from :func:`inox_io.manifest.tree_arrays`
    like: Dict[str, Any]  #: ``like``'s arrays by (preserved) position
    groups: Dict[str, List[str]]  #: every position of each ``like`` array, pruned ones included
    #: The stored keys found for each ``like`` array that fits: the first is read; the
    #: others (a tie that another tool stored twice) were checked to hold the same bytes.
    sources: Dict[str, List[str]]
    transforms: Dict[str, Callable[[Any], Any]]  #: by stored key, ``from_file``
    problems: List[str]  #: what does not fit, one line each
    unexpected: List[str]  #: stored keys that no position of ``like`` takes
    #: The file's values of the non-array leaves that differ from ``like``'s, by position.
    statics: Dict[str, Any]
    #: Positions where ``like`` has an abstract array and the file a JSON value, by position.
    static_arrays: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def report(self, *, strict: bool, stacklevel: int, statics: str = "like") -> None:
        r"""Raises (strict) or warns about what does not fit; warns about differing
        non-array leaves when they come from ``like`` (:py:`statics`, one of
        :data:`STATICS`).

        :py:`stacklevel` counts from the caller of this method, as for :func:`warnings.warn`.
        """

        if statics not in STATICS:
            raise ValueError(f"statics must be one of {', '.join(map(repr, STATICS))}, not {statics!r}")

        if strict:
            problems = self.problems + [f"{k}: in the file but not in like" for k in self.unexpected]
            if problems:
                raise CheckpointError(self.path, "does not fit like:\n  " + "\n  ".join(problems))
        elif self.problems or self.unexpected:
            warnings.warn(
                f"{self.path}: loaded partially; "
                + "; ".join(self.problems + [f"{k}: in the file but not in like (ignored)" for k in self.unexpected]),
                stacklevel=stacklevel + 1,
            )
        if self.statics and statics == "like":
            wanted = structure_statics(self.treedef)
            differences = [f"{key} is {value!r} in the checkpoint, {wanted[key]!r} in like" for key, value in self.statics.items()]
            warnings.warn(
                f"{self.path}: non-array leaves come from like: {'; '.join(differences)}. "
                "Pass statics='file' to take the checkpoint's, or save values that change "
                "(counters, positions) as arrays or as JSON items of a CheckpointManager.",
                stacklevel=stacklevel + 1,
            )

    def targets(self, shardings: Shardings) -> Dict[str, Target]:
        r"""Where each stored array to read goes; all positions of one array must agree.

        Raises:
            ValueError: if two tied positions ask for different shardings.
        """

        choose, fallback = _chooser(shardings)
        owners: Dict[str, List[str]] = {}  # stored key -> the like arrays reading it
        for key, stored in self.sources.items():
            owners.setdefault(stored[0], []).append(key)
        out = {}
        for stored, keys in owners.items():
            first_position, first = None, None
            for key in keys:
                for position in self.groups[key]:
                    sharding = choose(position, self.like[key])
                    if sharding is not None and first is not None and sharding != first:
                        raise ValueError(
                            f"tied positions {first_position} and {position} ask for different shardings "
                            f"({first} and {sharding}); a tied array is placed once"
                        )
                    if first is None:
                        first_position, first = position, sharding
            sharding = first if first is not None else fallback(self.like[keys[0]])
            out[stored] = Target(sharding, self.transforms.get(stored))
        return out

    def rebuild(self, arrays: Mapping[str, Any], statics: str = "like") -> PyTree:
        r"""The ``like`` tree with the arrays read (by stored key) at the positions that
        fit, and its own leaves elsewhere; its non-array leaves, or the file's where
        they differ if :py:`statics` is ``"file"``."""

        values = {}
        for key, leaf in self.like.items():
            stored = self.sources.get(key)
            if stored:
                values[key] = arrays[stored[0]]
            elif key in self.static_arrays:
                values[key] = jax.numpy.asarray(self.static_arrays[key], dtype=leaf.dtype)
            else:
                values[key] = leaf
        tree = combine(self.treedef, values)
        if statics == "file" and self.statics:

            def from_file(path: Any, leaf: Any) -> Any:
                key = jtu.keystr(path)
                return type(leaf).wrap(self.statics[key]) if isinstance(leaf, Static) and key in self.statics else leaf

            tree = jtu.tree_map_with_path(from_file, tree, is_leaf=lambda x: isinstance(x, Static))
        return unmask(tree)


def fit(reader: Reader, like: PyTree | None, *, names: Names | None = None, transforms: Transforms | None = None) -> Fit:
    r"""Matches the arrays of an open checkpoint with the positions of :py:`like`.

    By stored key (:py:`names` None): each position of ``like`` takes the array the
    file keeps at the same key path, and the ties of the file and of ``like`` must be
    the same. By stored name: each array of ``like`` is looked up under
    :py:`names(position)` of any of its positions, in files written by other tools too
    (their safetensors ``__metadata__`` may map dropped names to kept ones, as
    :func:`safetensors.torch.save_model` writes); the ties come from ``like``. Without
    ``like``, every position of the file (see :func:`_fit_file`).
    """

    if isinstance(like, type):
        raise TypeError(
            f"{reader.path}: like is the class {like.__name__}, not a tree; pass an instance, "
            f"or inox_io.abstract({like.__name__}, ...) to build one without computing anything"
        )
    if like is None:
        if names is not None:
            raise ValueError(f"{reader.path}: names need a like; without one, the file's own positions are loaded")
        return _fit_file(reader, transforms)
    manifest = reader.manifest
    treedef, preserved = tree_arrays(like)
    # Manifest.positions() reads only the keys of the arrays: no ArrayInfo is needed.
    positions = Manifest(dict.fromkeys(preserved), structure_ties(treedef)).positions()  # type: ignore[arg-type]
    groups: Dict[str, List[str]] = {key: [] for key in preserved}
    for position, key in sorted(positions.items(), key=lambda item: item[0] != item[1]):
        groups[key].append(position)

    if names is None:
        found = manifest.positions()
        lookups = {key: [key] for key in preserved}
        problems = _tie_problems(manifest, treedef)
    else:
        found = _file_names(reader, names)
        lookups = {key: [name for name, _ in group] for key, group in name_positions(positions, names).items()}
        problems = []

    def found_as(lookup: List[str], stored: str | None = None) -> str:
        if names is None:
            return ""
        return f" (as {stored})" if stored else f" (as {' or '.join(repr(n) for n in lookup)})"

    missing, sources, used, chosen_transforms, static_arrays = [], {}, set(), {}, {}
    for key, leaf in preserved.items():
        stored = list(dict.fromkeys(found[n] for n in lookups[key] if n in found))
        if not stored:
            if isinstance(leaf, jax.ShapeDtypeStruct) and key in manifest.statics:
                # An abstract like (jax.eval_shape) turns saved numbers into arrays.
                problem = _static_problem(key, leaf, manifest.statics[key])
                if problem is None:
                    static_arrays[key] = manifest.statics[key]
                else:
                    problems.append(problem)
                continue
            missing.append(f"{key}: missing from the file{found_as(lookups[key])}")
            continue
        used.update(stored)
        info = _transformed(manifest.arrays[stored[0]], stored[0], transforms, chosen_transforms)
        for other in stored[1:]:
            if not _same_bytes(reader, stored[0], other, Target(transform=chosen_transforms.get(stored[0]))):
                problems.append(f"{key}: tied in like, but the file holds {stored[0]} and {other} with different values")
        dtype, shape = leaf_description(leaf)
        if (dtype, shape) != (info.dtype, info.shape):
            problems.append(f"{key}: {dtype}{list(shape)} expected, {_describe(info)} found{found_as([], stored[0])}")
            continue
        sources[key] = stored

    return Fit(
        path=reader.path,
        treedef=treedef,
        like=preserved,
        groups=groups,
        sources=sources,
        transforms=chosen_transforms,
        problems=problems + missing,
        # A mismatched array is reported once, as such, not also as unexpected.
        unexpected=[key for key in manifest.arrays if key not in used],
        statics=_static_differences(manifest, treedef),
        static_arrays=static_arrays,
    )


def _fit_file(reader: Reader, transforms: Transforms | None) -> Fit:
    r"""Every position of the file, as a flat ``like``: ``{position: array}`` for its
    stored keys and the aliases of its ties (each alias reads its tie's array), and
    ``{position: value}`` for its JSON leaves."""

    manifest = reader.manifest
    positions = manifest.positions()
    like = {position: abstract_leaf(manifest.arrays[stored]) for position, stored in positions.items()}
    like.update(manifest.statics)
    treedef, preserved = tree_arrays(like)
    own = {jtu.keystr((jtu.DictKey(position),)): position for position in positions}  # like's paths
    chosen_transforms: Dict[str, Callable[[Any], Any]] = {}
    for stored in manifest.arrays:
        _transformed(manifest.arrays[stored], stored, transforms, chosen_transforms)
    return Fit(
        path=reader.path,
        treedef=treedef,
        like=preserved,
        groups={key: [own[key]] for key in preserved},
        sources={key: [positions[own[key]]] for key in preserved},
        transforms=chosen_transforms,
        problems=[],
        unexpected=[],
        statics={},
    )


def _transformed(info: ArrayInfo, stored: str, transforms: Transforms | None, chosen: Dict[str, Callable[[Any], Any]]) -> ArrayInfo:
    r"""The description of a stored array once its ``from_file`` transform (recorded in
    :py:`chosen`) is applied; PRNG keys are never transformed."""

    pair = find_transform(transforms, stored)
    if pair is None or info.key_impl:
        return info
    chosen[stored] = pair[1]
    return transformed_info(info, pair[1])


def _static_problem(key: str, leaf: jax.ShapeDtypeStruct, value: Any) -> str | None:
    r"""Why a JSON value of the file cannot fill an abstract array of ``like``, if not."""

    dtype, shape = leaf_description(leaf)
    numbers = not is_key_dtype(leaf.dtype) and not isinstance(value, (str, dict))
    if numbers and np.shape(value) == shape and np.asarray(value).dtype.kind in "biuf":
        return None
    return f"{key}: {dtype}{list(shape)} expected, the file holds the value {value!r} (not an array)"


def _file_names(reader: Reader, names: Names) -> Dict[str, str]:
    r"""Every name under which the file holds an array -> its stored key: the stored
    keys, the aliases of its manifest, the ``dropped -> kept`` entries of its own
    metadata, and the names of the key paths of a file saved without names."""

    manifest = reader.manifest
    found = manifest.positions()
    for dropped, kept in reader.metadata.items():
        if dropped not in found and kept in manifest.arrays:
            found[dropped] = kept
    for position, key in list(found.items()):
        if keypath.is_key_path(position):
            found.setdefault(names(position), key)
    return found


def _tie_problems(manifest: Manifest, like_treedef: jtu.PyTreeDef) -> List[str]:
    r"""How the ties of the file and those of ``like`` differ."""

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


def _static_differences(manifest: Manifest, like_treedef: jtu.PyTreeDef) -> Dict[str, Any]:
    saved, wanted = manifest.statics, structure_statics(like_treedef)
    return {
        key: saved[key]
        for key in sorted(set(saved) & set(wanted))
        if type(saved[key]) is not type(wanted[key]) or saved[key] != wanted[key]
    }


def _same_bytes(reader: Reader, a: str, b: str, target: Target) -> bool:
    r"""Whether two stored arrays hold the same bytes once transformed (NaNs included)."""

    manifest = reader.manifest
    x = target.apply(manifest.arrays[a], reader.host(a))[1]
    y = target.apply(manifest.arrays[b], reader.host(b))[1]
    return x.dtype == y.dtype and x.shape == y.shape and np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes()


def _target_sharding(leaf: Any) -> jax.sharding.Sharding | None:
    if isinstance(leaf, (jax.ShapeDtypeStruct, jax.Array)):
        return getattr(leaf, "sharding", None)
    return None


def _chooser(shardings: Shardings) -> Tuple[Callable[[str, Any], Any], Callable[[Any], Any]]:
    r"""The sharding a position asks for, and the sharding of an array whose positions
    ask for none."""

    if shardings is None:
        return (lambda position, leaf: _target_sharding(leaf)), (lambda leaf: None)
    if isinstance(shardings, jax.sharding.Sharding):
        return (lambda position, leaf: shardings), (lambda leaf: None)
    if callable(shardings) and jtu.all_leaves([shardings]):  # a function, not a tree (a model may be callable)
        return shardings, (lambda leaf: None)

    def is_leaf(x: Any) -> bool:
        return isinstance(x, (jax.sharding.Sharding, Static))

    keyed = {}
    for path, leaf in jtu.tree_leaves_with_path(shardings, is_leaf=is_leaf):
        leaf = leaf.value if isinstance(leaf, Static) else leaf
        if isinstance(leaf, jax.sharding.Sharding):
            keyed[jtu.keystr(path)] = leaf
    if isinstance(shardings, Mapping):  # {position: sharding}, as a load without like returns
        keyed.update((k, v) for k, v in shardings.items() if isinstance(k, str) and isinstance(v, jax.sharding.Sharding))
    # A tied Scope prunes its aliases from the shardings tree too: a missing position
    # has no opinion; like's sharding serves when no position has one.
    return (lambda position, leaf: keyed.get(position)), _target_sharding
