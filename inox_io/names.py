r"""Stored names: how the arrays of a tree are called in a file written for another
library, and the arrays that go through a change (a transpose) on the way.

A *names function* maps a key path of the tree (:func:`jax.tree_util.keystr`, as in
``inox.tree.prepr``) to the key under which its array is stored. :func:`torch_names` is
the PyTorch ``state_dict`` convention.

Example:
    >>> torch_names('.transformer.h[0].attn.c_attn.weight.value')
    'transformer.h.0.attn.c_attn.weight'
    >>> find_transform({'*.c_fc.weight': TRANSPOSE}, 'h.0.mlp.c_fc.weight') is TRANSPOSE
    True
"""

from __future__ import annotations

__all__ = [
    "Names",
    "Keep",
    "Transforms",
    "TRANSPOSE",
    "torch_names",
    "Renamed",
    "rename",
    "choose_kept",
    "find_transform",
    "transformed_info",
    "name_arrays",
]

import collections.abc
import dataclasses
import fnmatch
import jax
import numpy as np

from typing import Any, Callable, Collection, Dict, List, Mapping, Sequence, Tuple

from . import keypath
from .dtypes import dtype_name
from .manifest import FORMAT, ArrayInfo, Manifest

#: A key path of the tree -> the key of its array in the file.
Names = Callable[[str], str]

#: Which name of a shared array is stored: a function of the names (preserved occurrence
#: first) returning one of them, or a collection of preferred names.
Keep = Callable[[Sequence[str]], str] | Collection[str]

#: Array changes by stored name: ``{pattern_or_predicate: (to_file, from_file)}``.
Transforms = Mapping[str | Callable[[str], bool], Tuple[Callable[[Any], Any], Callable[[Any], Any]]]


def _swap_last_axes(x: Any) -> Any:
    # Array methods, not NumPy functions: works on NumPy and JAX arrays alike.
    return x.swapaxes(-1, -2)


#: The transform pair of a linear weight stored as PyTorch's ``(out, in)`` while inox
#: holds ``(in, out)``: swapping the last two axes both ways.
TRANSPOSE = (_swap_last_axes, _swap_last_axes)

def torch_names(path: str) -> str:
    r"""The PyTorch ``state_dict`` name of a key path: no leading dot, no ``.value``
    hops (those of :class:`inox.nn.Reference` and :class:`inox.nn.Parameter`), indices
    and dictionary keys as dotted components.

    A module attribute that is itself called ``value`` is dropped as well; for such a
    model (BERT's ``attention.self.value``), wrap this function with a renaming of
    your own.

    Example:
        >>> torch_names('.transformer.h[0].attn.c_attn.weight.value')
        'transformer.h.0.attn.c_attn.weight'
        >>> torch_names('.l3.weight.value.value')
        'l3.weight'
        >>> torch_names("['a']"), torch_names("['blocks'][1]['w']")
        ('a', 'blocks.1.w')
        >>> torch_names('transformer.wte.weight')  # already a PyTorch name
        'transformer.wte.weight'
    """

    return ".".join(s.key for s in keypath.split(path) if (s.kind, s.key) != (".", "value"))


def choose_kept(names: Sequence[str], keep: Keep | None) -> str:
    r"""Chooses the stored name among the names of one shared array.

    Arguments:
        names: The names, that of the preserved occurrence first.
        keep: None (the preserved occurrence), a collection of preferred names, or a
            function returning one of :py:`names`.

    Example:
        >>> choose_kept(['lm_head.weight', 'wte.weight'], None)
        'lm_head.weight'
        >>> choose_kept(['lm_head.weight', 'wte.weight'], {'wte.weight'})
        'wte.weight'
        >>> choose_kept(['lm_head.weight', 'wte.weight'], min)
        'lm_head.weight'
    """

    if keep is None or len(names) == 1:
        return names[0]
    if callable(keep):
        kept = keep(list(names))
        if kept not in names:
            raise ValueError(f"keep returned {kept!r}, which is not one of {list(names)}")
        return kept
    if isinstance(keep, str):
        keep = {keep}
    return next((n for n in names if n in keep), names[0])


@dataclasses.dataclass
class Renamed:
    r"""A manifest moved to stored names.

    Its arrays are keyed by their kept names, and every dropped name is an alias of its
    kept name: the ties are the alias groups.
    """

    manifest: Manifest
    source: Dict[str, str]  #: kept name -> key of the original manifest
    dropped: Dict[str, str]  #: dropped name -> kept name


def name_positions(positions: Mapping[str, str], names: Names) -> Dict[str, List[Tuple[str, str]]]:
    r"""Groups the positions by stored key and names them: ``{key: [(name, position)]}``,
    each name once per group, the key's own position first.

    Raises:
        ValueError: if two positions of different arrays get the same name, naming both.
        TypeError: if a name is not a non-empty string.
    """

    owner: Dict[str, Tuple[str, str]] = {}
    groups: Dict[str, List[Tuple[str, str]]] = {}
    for position, key in sorted(positions.items(), key=lambda item: item[0] != item[1]):
        name = names(position)
        if not isinstance(name, str) or not name:
            raise TypeError(f"names({position!r}) returned {name!r}; a non-empty string expected")
        if name in owner:
            other, other_key = owner[name]
            if other_key != key:
                raise ValueError(f"{other} and {position} are both named {name!r}")
            continue  # two positions of one shared array: one name
        owner[name] = (position, key)
        groups.setdefault(key, []).append((name, position))
    return groups


def rename(manifest: Manifest, names: Names, keep: Keep | None = None) -> Renamed:
    r"""Moves a manifest to stored names: one name kept per stored array, the names of
    its other positions dropped (recorded as aliases).

    Example:
        >>> e = nn.Parameter(jnp.ones((4, 2)))
        >>> tree = nn.Scope(head=nn.Reference('e', e), wte=nn.Reference('e', e))
        >>> manifest, _ = inox_io.manifest.build(tree)
        >>> renamed = rename(manifest, torch_names, keep=['wte'])
        >>> list(renamed.manifest.arrays), renamed.dropped
        (['wte'], {'head': 'wte'})
    """

    arrays, aliases, source = {}, {}, {}
    for key, group in name_positions(manifest.positions(), names).items():
        kept = choose_kept([name for name, _ in group], keep)
        arrays[kept] = dataclasses.replace(manifest.arrays[key])
        source[kept] = key
        aliases.update({name: kept for name, _ in group if name != kept})
    named = Manifest(
        arrays,
        aliases=aliases,
        statics=dict(manifest.statics),
        metadata=dict(manifest.metadata),
        libraries=dict(manifest.libraries),
        named_ties=list(manifest.ties) + list(manifest.named_ties),
    )
    return Renamed(named, source, aliases)


def find_transform(transforms: Transforms | None, name: str) -> Tuple[Callable, Callable] | None:
    r"""The ``(to_file, from_file)`` pair of a stored name: that of the first key of
    :py:`transforms` that matches it, a :mod:`fnmatch` pattern (``*`` spans dots) or a
    predicate.

    Example:
        >>> pair = find_transform({'*.c_fc.weight': TRANSPOSE}, 'h.0.mlp.c_fc.weight')
        >>> pair is TRANSPOSE, find_transform({'*.c_fc.weight': TRANSPOSE}, 'wte.weight')
        (True, None)
    """

    for pattern, pair in (transforms or {}).items():
        matched = pattern(name) if callable(pattern) else fnmatch.fnmatchcase(name, pattern)
        if matched:
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(map(callable, pair))):
                raise TypeError(f"transforms[{pattern!r}]: a pair (to_file, from_file) of functions expected")
            return pair
    return None


def transformed_info(info: ArrayInfo, fn: Callable[[Any], Any]) -> ArrayInfo:
    r"""The dtype and shape of :py:`fn` applied to an array of :py:`info`, without
    computing it: traced by JAX, or, for a NumPy-only function (or 64-bit data that JAX
    would narrow), applied to a view of one zero that has the array's shape.

    Example:
        >>> transformed_info(ArrayInfo('float32', (2, 3), 24), TRANSPOSE[1])
        ArrayInfo(dtype='float32', shape=(3, 2), nbytes=24, crc32=None, key_impl=None)
    """

    if info.key_impl:
        raise TypeError("PRNG key arrays cannot be transformed")
    dtype = info.storage_dtype
    try:
        if jax.dtypes.canonicalize_dtype(dtype) != dtype:
            raise TypeError  # 64-bit data without jax_enable_x64: tracing would narrow it
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(info.shape, dtype))
    except Exception:
        out = np.asarray(fn(np.broadcast_to(np.zeros((), dtype), info.shape)))
    return ArrayInfo(dtype_name(out.dtype), tuple(out.shape), int(np.prod(out.shape)) * np.dtype(out.dtype).itemsize)


class _Stored(collections.abc.Mapping):
    r"""The arrays to write, by stored key: renamed and transformed when asked for.

    Writers ask for one array at a time, so at most one transformed copy lives at once.
    """

    def __init__(self, arrays: Mapping[str, Any], source: Mapping[str, str], fns: Mapping[str, Callable]):
        self.arrays, self.source, self.fns = arrays, source, fns

    def __getitem__(self, key: str) -> Any:
        x = self.arrays[self.source[key]]
        return self.fns[key](x) if key in self.fns else x

    def __iter__(self):
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)


def name_arrays(
    manifest: Manifest,
    arrays: Mapping[str, Any],
    *,
    names: Names | None = None,
    keep: Keep | None = None,
    transforms: Transforms | None = None,
) -> Tuple[Manifest, Mapping[str, Any], Dict[str, str]]:
    r"""Moves a manifest and its arrays to stored names and transforms the arrays, on
    their way to a file; without names or transforms, returns them as they are.

    Returns:
        The manifest to write, the arrays by stored key, and the extra file metadata
        (see :meth:`inox_io.formats.Format.write`): with names, the dropped names
        (``dropped -> kept``, as :func:`safetensors.torch.save_model` writes) and the
        user metadata.

    Example:
        >>> e = nn.Parameter(jnp.ones((4, 2)))
        >>> manifest, arrays = inox_io.manifest.build(nn.Scope(head=nn.Reference('e', e), wte=nn.Reference('e', e)))
        >>> named, stored, extra = name_arrays(manifest, arrays, names=torch_names, transforms={'*': TRANSPOSE})
        >>> named.arrays['head'].shape, stored['head'].shape, extra
        ((2, 4), (2, 4), {'wte': 'head'})
    """

    if names is None:
        if keep is not None:
            raise ValueError("keep chooses among the names of a shared array: pass names too")
        if not transforms:
            return manifest, arrays, {}
        named, source, extra = manifest, {key: key for key in manifest.arrays}, {}
    else:
        renamed = rename(manifest, names, keep)
        named, source = renamed.manifest, renamed.source
        extra = dict(renamed.dropped)
        for key, value in manifest.metadata.items():
            if key in extra or key == FORMAT:
                raise ValueError(f"metadata {key!r} clashes with the name of a dropped array or with {FORMAT!r}")
            if isinstance(value, str):  # other tools read string metadata only; the manifest holds all
                extra[key] = value

    fns = {key: pair[0] for key in source if (pair := find_transform(transforms, key))}
    for key, fn in fns.items():
        try:
            named.arrays[key] = transformed_info(named.arrays[key], fn)
        except TypeError as e:
            raise TypeError(f"{key}: {e}") from None
    return named, _Stored(arrays, source, fns), extra
