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
    "split_path",
    "Renamed",
    "rename",
    "choose_kept",
    "find_transform",
]

import ast
import dataclasses
import fnmatch
import re

from typing import Any, Callable, Collection, Dict, List, Mapping, Sequence, Tuple

from .manifest import Manifest

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

# Segments of a key path: `.attr`, `[0]`, `['key']`; a leading bare name is accepted so
# that names already in the PyTorch convention map to themselves.
_SEGMENT = re.compile(r"""\.?([^.\[\]]+)|\[('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\]]*)\]""")


def split_path(path: str) -> List[Tuple[str, str]]:
    r"""Splits a key path into ``(kind, key)`` segments, kind ``'.'`` for attributes
    and ``'['`` for indices and dictionary keys (unquoted).

    Raises:
        ValueError: if the path is not a key path.

    Example:
        >>> split_path(".l1.value['w'][0]")
        [('.', 'l1'), ('.', 'value'), ('[', 'w'), ('[', '0')]
    """

    segments, offset = [], 0
    while offset < len(path):
        match = _SEGMENT.match(path, offset) if offset == 0 or path[offset] in ".[" else None
        if match is None:
            raise ValueError(f"{path!r} is not a key path")
        attr, index = match.groups()
        if attr is not None:
            segments.append((".", attr))
        else:
            try:
                key = ast.literal_eval(index) if index[:1] in "'\"" else index
            except (ValueError, SyntaxError):
                key = index
            segments.append(("[", str(key)))
        offset = match.end()
    return segments


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

    return ".".join(key for kind, key in split_path(path) if (kind, key) != (".", "value"))


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
