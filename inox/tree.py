r"""PyTree utilities: registration, masking, partitioning and representation.

Every array of a tree has a *key path*, the string :func:`jax.tree_util.keystr` gives
for its position (``'.layers[0].weight.value'``). :func:`partition` and :func:`combine`
convert between trees and flat ``{path: leaf}`` dictionaries, the form in which
optimizers and checkpoints see a model.

Example:
    >>> tree = {'w': jnp.ones((2, 3)), 'name': 'mlp', 'b': [jnp.zeros(3)]}
    >>> treedef, arrays, others = partition(mask(tree), jax.Array)
    >>> print(prepr(arrays))
    {"['b'][0]": float32[3], "['w']": float32[2, 3]}
    >>> unmask(combine(treedef, arrays, others))['name']
    'mlp'
"""

from __future__ import annotations

__all__ = [
    "PyTreeMeta",
    "Namespace",
    "Partial",
    "Static",
    "Mask",
    "is_array",
    "is_atom",
    "warn_if_unstable",
    "mask",
    "unmask",
    "mask_static",
    "unmask_static",
    "partition",
    "combine",
    "static_leaves",
    "leaf_paths",
    "find_duplicates",
    "prepr",
]

import dataclasses
import functools
import jax
import warnings
import jax.tree_util as jtu
import numpy as np

from typing import Any, Callable, Dict, Hashable, Iterator, List, Sequence, Tuple

from .errors import RecompilationWarning

PyTree = Any
PyTreeDef = jtu.PyTreeDef  # the original inox's name for annotations
KeyPath = Tuple[Any, ...]
Filter = type | Callable[[Any], bool]


def is_array(x: Any) -> bool:
    r"""Returns whether :py:`x` is an array, concrete (JAX or NumPy) or abstract.

    Abstract arrays (:class:`jax.ShapeDtypeStruct`) count, so that shape-only trees
    keep their leaves through :func:`mask` and :func:`partition`.

    Example:
        >>> is_array(jnp.zeros(2)), is_array(jax.ShapeDtypeStruct((2,), 'f4')), is_array(2.0)
        (True, True, False)
    """

    return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def is_atom(x: Any) -> bool:
    r"""Returns whether :py:`x` has no children: :py:`None`, or a leaf for JAX.

    Example:
        >>> is_atom(None), is_atom('a'), is_atom(jnp.ones(2)), is_atom([]), is_atom(Static(1))
        (True, True, True, False, False)
    """

    return x is None or jtu.all_leaves([x])


class PyTreeMeta(type):
    r"""Metaclass that registers every class it creates as a PyTree with keys.

    A class must define :py:`tree_flatten_with_keys(self) -> (children_with_keys, aux)`
    and the class method :py:`tree_unflatten(aux, children)`; it may define a faster
    :py:`tree_flatten(self) -> (children, aux)`. A class may also define
    :py:`tree_children(self)`, the raw ``(key, child)`` pairs seen by
    :func:`find_duplicates`, when its flattening transforms its children.

    Example:
        >>> class Pair(metaclass=PyTreeMeta):
        ...     def __init__(self, a, b):
        ...         self.a, self.b = a, b
        ...     def tree_flatten_with_keys(self):
        ...         return [(jtu.GetAttrKey('a'), self.a), (jtu.GetAttrKey('b'), self.b)], None
        ...     @classmethod
        ...     def tree_unflatten(cls, aux, children):
        ...         return cls(*children)
        >>> jax.tree.leaves(jax.tree.map(lambda x: x + 1, Pair(1, 2)))
        [2, 3]
    """

    def __new__(mcs, name: str, bases: tuple, namespace: dict, **kwargs):
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        jtu.register_pytree_with_keys(
            cls,
            cls.tree_flatten_with_keys,
            cls.tree_unflatten,
            getattr(cls, "tree_flatten", None),
        )
        return cls


def is_node(x: Any) -> bool:
    r"""Returns whether :py:`x` is an instance of a :class:`PyTreeMeta` class."""

    return isinstance(type(x), PyTreeMeta)


def tree_repr(self: Any, linewidth: int = 88, typeonly: bool = True, **kwargs: Any) -> str:
    r"""The representation of a node as :func:`prepr` gives it, under the name of the
    original inox's hook: :class:`Namespace` and :class:`Static` (so modules and
    parameters) have it as their method :py:`tree_repr`, which subclasses written for
    the original override and call through :py:`super()`.

    Example:
        >>> class Tagged(nn.Module):
        ...     def tree_repr(self, **kwargs):
        ...         return 'tagged ' + super().tree_repr(**kwargs)
        >>> print(prepr([Tagged(a=1)]))
        [
          tagged Tagged(
            a = 1
          )
        ]
    """

    printer = _Printer(linewidth, typeonly)
    printer.ancestors.add(id(self))  # a cycle back to it is shown, not followed
    return printer.plain(self, 0)


def _unhashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return True
    return False


def _local_function(value: Any) -> bool:
    # A lambda, or a function defined inside another: each evaluation of its
    # definition makes a new object, equal only to itself.
    name = getattr(value, "__qualname__", "") if callable(value) else ""
    return isinstance(name, str) and ("<lambda>" in name or "<locals>" in name)


def warn_if_unstable(value: Any, stacklevel: int = 2) -> None:
    r"""Warns, with :class:`inox.errors.RecompilationWarning`, where a value made
    static would likely make :func:`jax.jit` compile again: a value that cannot be
    hashed (a list, an array), or a local function (a lambda, or a function defined in
    another), as the original inox warns.

    Arguments:
        value: The value about to be made static.
        stacklevel: The caller's frame to blame, as in :func:`warnings.warn`
            (counted from the caller of this function).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter('always')
        ...     warn_if_unstable((1, 'a')); warn_if_unstable(len)  # fine
        ...     warn_if_unstable([1]); warn_if_unstable(lambda x: x)
        >>> for w in caught: print(w.message)
        static value of unhashable type 'list': it may cause frequent JIT recompilations.
        static local function '<lambda>': it may cause frequent JIT recompilations.
    """

    if _unhashable(value):
        what = f"static value of unhashable type '{type(value).__name__}'"
    elif _local_function(value):
        what = f"static local function '{value.__qualname__}'"
    else:
        return
    warnings.warn(f"{what}: it may cause frequent JIT recompilations.", RecompilationWarning, stacklevel + 1)


class Static(metaclass=PyTreeMeta):
    r"""Hashable, leafless wrapper: its value lives in the tree definition.

    Two wrappers are equal when their values are equal and of the same type, so that
    :func:`jax.jit` does not retrace for equal hyper-parameters. Values that cannot be
    hashed (lists) hash by their type alone; values whose equality is not a boolean
    (arrays) compare by identity.

    As the original inox's, the constructor warns (:func:`warn_if_unstable`) where the
    value is likely to make :func:`jax.jit` compile again: one that cannot be hashed,
    or a local function. :meth:`wrap` does not check.

    Arguments:
        value: The value to wrap, preferably hashable.
        warn: Whether to warn about such a value.

    Example:
        >>> jax.tree.leaves([Static('relu'), jnp.ones(2)])
        [Array([1., 1.], dtype=float32)]
        >>> Static('relu') == Static('relu'), Static(1) == Static(1.0)
        (True, False)
        >>> a, b = Static([1, 2], warn=False), Static([1, 2], warn=False)  # no warning
        >>> a == b, hash(a) == hash(Static.wrap([3]))
        (True, True)
        >>> f = jax.jit(lambda s: jnp.asarray(s.value) * 2)
        >>> f(Static(1)).dtype, f(Static(1.0)).dtype  # one trace each
        (dtype('int32'), dtype('float32'))
        >>> jax.tree.structure(Static((0, 'one', None)))
        PyTreeDef(CustomNode(Static[(0, 'one', None)], []))
    """

    __slots__ = ("value",)

    def __init__(self, value: Any, *, warn: bool = True):
        if warn:
            warn_if_unstable(value)
        self.value = value

    @classmethod
    def wrap(cls, value: Any) -> Static:
        r"""Wraps a value without the constructor (no warning, no :py:`__init__` of
        a subclass): how unflattening, unpickling and copying rebuild a wrapper, and
        how inox wraps values that its user did not choose to make static.

        Example:
            >>> Mask.wrap([1, 2])  # no warning
            Mask([1, 2])
        """

        self = object.__new__(cls)
        self.value = value
        return self

    def __eq__(self, other: Any) -> bool:
        if type(other) is not type(self):
            return False
        if self.value is other.value:
            return True
        try:
            return bool(self.value == other.value) and type(self.value) is type(other.value)
        except Exception:
            return False

    def __hash__(self) -> int:
        try:
            return hash((type(self), type(self.value), self.value))
        except TypeError:
            return hash((type(self), type(self.value)))

    tree_repr = tree_repr

    def __repr__(self) -> str:
        return prepr(self)

    def __prepr__(self, printer, indent: int) -> str:
        name = type(self).__name__
        return f"{name}({printer(self.value, indent + len(name) + 1)})"

    def tree_flatten(self):
        return (), _StaticData(self)

    def tree_flatten_with_keys(self):
        return (), _StaticData(self)

    @classmethod
    def tree_unflatten(cls, data: _StaticData, children: Sequence) -> Static:
        return cls.wrap(data.static.value)

    def __reduce__(self):
        # Not __getstate__: pickle and copy skip __setstate__ when the state is None,
        # which would leave Static(None) without a value.
        return type(self).wrap, (self.value,)


class _StaticData:
    r"""The tree definition's data of a :class:`Static`: compared and hashed as the
    wrapper (so 1 and 1.0 differ: with the raw value, :func:`jax.jit` would reuse for
    1.0 the trace it made for 1, as 1 == 1.0), shown as the value, as the original
    inox shows it (:py:`PyTreeDef(CustomNode(Static[1], []))`)."""

    __slots__ = ("static",)

    def __init__(self, static: Static):
        self.static = static

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _StaticData) and self.static == other.static

    def __hash__(self) -> int:
        return hash(self.static)

    def __repr__(self) -> str:
        return repr(self.static.value)


class Mask(Static):
    r"""The :class:`Static` that :func:`mask` wraps leaves in, and that :func:`unmask`
    unwraps: a :class:`Static` set by hand is left as it is by both.

    Example:
        >>> mask([1, jnp.arange(2), 'three'])
        [Mask(1), Array([0, 1], dtype=int32), Mask('three')]
        >>> unmask([Mask(1), Static(2)])
        [1, Static(2)]
    """

    __slots__ = ()


def _is_mask(x: Any) -> bool:
    return type(x) is Mask


def _unwrap_mask(x: Any) -> Any:
    return x.value if _is_mask(x) else x


def mask(tree: PyTree, is_static: Callable[[Any], bool] | None = None, *, warn: bool = True) -> PyTree:
    r"""Wraps the non-array leaves of a tree in :class:`Mask`, hiding them from
    :func:`jax.tree.leaves` and :func:`jax.tree.map`.

    The masked values become part of the tree definition. Masking a masked tree gives
    the same tree, as masks are leafless.

    Arguments:
        tree: A tree.
        is_static: Which leaves to hide; by default those that are not arrays.
        warn: Whether to warn, as :class:`Static` does, about leaves that would make
            :func:`jax.jit` compile again (local functions); off where the tree is
            masked for bookkeeping, not for a transformation.

    Example:
        >>> jax.tree.leaves(mask({'a': jnp.zeros(1), 'n': 3}))
        [Array([0.], dtype=float32)]
        >>> mask(mask({'n': 3}))
        {'n': Mask(3)}
    """

    is_static = is_static or (lambda x: not is_array(x))
    wrap = Mask if warn else Mask.wrap
    return jax.tree.map(lambda x: wrap(x) if is_static(x) else x, tree)


def unmask(tree: PyTree) -> PyTree:
    r"""Inverse of :func:`mask`: unwraps every :class:`Mask` of a tree.

    Example:
        >>> unmask(mask({'a': jnp.zeros(1), 'n': 3}))['n']
        3
    """

    return jax.tree.map(_unwrap_mask, tree, is_leaf=_is_mask)


def mask_static(tree: PyTree, is_static: Callable[[Any], bool] | None = None) -> PyTree:
    r"""The name of :func:`mask` in inox 0.7.

    Example:
        >>> mask_static(['relu', jnp.ones(1)])
        [Mask('relu'), Array([1.], dtype=float32)]
    """

    return mask(tree, is_static)


def unmask_static(tree: PyTree) -> PyTree:
    r"""The name of :func:`unmask` in inox 0.7.

    Example:
        >>> unmask_static(mask_static(['relu', jnp.ones(1)]))
        ['relu', Array([1.], dtype=float32)]
    """

    return unmask(tree)


def mask_children(tree: PyTree) -> PyTree:
    r"""Masks the non-array leaves of a tree without entering :class:`PyTreeMeta` nodes.

    Nodes such as modules and references mask their own children, and must be kept as
    the same objects so that shared identity can be detected by their scope. This does
    not warn as :class:`Static` does: the original inox does not hide the leaves of
    modules, so it has no warning to give here either.
    """

    def wrap(x: Any) -> Any:
        return x if is_node(x) or is_array(x) or x is None else Mask.wrap(x)

    return jax.tree.map(wrap, tree, is_leaf=is_node)


def unmask_children(tree: PyTree) -> PyTree:
    r"""Inverse of :func:`mask_children`."""

    return jax.tree.map(_unwrap_mask, tree, is_leaf=is_node)


class Namespace(metaclass=PyTreeMeta):
    r"""PyTree of named attributes, flattened in sorted name order.

    Its representation lists one attribute per line, in sorted order; attributes whose
    name starts with an underscore are left out.

    Arguments:
        kwargs: A name-value mapping.

    Example:
        >>> ns = Namespace(b='2', a=1)
        >>> ns
        Namespace(
          a = 1,
          b = '2'
        )
        >>> [jtu.keystr(path) for path, _ in jtu.tree_leaves_with_path(ns)]
        ['.a', '.b']
    """

    tree_repr = tree_repr

    def __init__(self, **kwargs):
        for name, value in kwargs.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return prepr(self)

    def tree_children(self) -> List[Tuple[Any, Any]]:
        return [(jtu.GetAttrKey(name), value) for name, value in sorted(vars(self).items())]

    def tree_flatten(self):
        names = tuple(sorted(vars(self)))
        attrs = vars(self)
        return [attrs[name] for name in names], names

    def tree_flatten_with_keys(self):
        names = tuple(sorted(vars(self)))
        attrs = vars(self)
        return [(jtu.GetAttrKey(name), attrs[name]) for name in names], names

    @classmethod
    def tree_unflatten(cls, names: Tuple[str, ...], values: Sequence) -> Namespace:
        self = object.__new__(cls)
        self.__dict__.update(zip(names, values))
        return self


class Partial(Namespace):
    r"""A :func:`functools.partial` whose function and arguments are PyTree children,
    the attributes :py:`func`, :py:`args` and :py:`kwds`.

    Unlike :class:`jax.tree_util.Partial`, the function itself may hold arrays (a
    module, for instance). Use :func:`mask` to hide non-array leaves.

    Arguments:
        func: The function.
        args: Positional arguments to prepend.
        kwds: Keyword arguments.

    Example:
        >>> f = Partial(jnp.multiply, jnp.asarray(2.0))
        >>> f(3.0)
        Array(6., dtype=float32, weak_type=True)
        >>> unmask(jax.tree.map(lambda x: x * 2, mask(f)))(3.0)
        Array(12., dtype=float32, weak_type=True)
        >>> Partial(print, sep='-')('a', 'b')
        a-b
    """

    def __init__(self, func: Callable, *args: Any, **kwds: Any):
        self.func = func
        self.args = args
        self.kwds = kwds

    def __call__(self, *args: Any, **kwds: Any) -> Any:
        return self.func(*self.args, *args, **{**self.kwds, **kwds})


def _as_predicate(f: Filter) -> Callable[[Any], bool]:
    if isinstance(f, type):
        return lambda x: isinstance(x, f)
    return f


def skeleton(treedef: jtu.PyTreeDef) -> PyTree:
    r"""Rebuilds a tree from its definition alone, with a placeholder (a scalar
    :class:`jax.ShapeDtypeStruct`) at each leaf: what the structure holds (paths, hidden
    non-array leaves, references and their tags) can then be read without the tree.

    Placeholders count as arrays: modules hide non-array leaves when they flatten.

    Example:
        >>> skeleton(jax.tree.structure({'a': 0}))
        {'a': ShapeDtypeStruct(shape=(), dtype=float32)}
    """

    placeholder = jax.ShapeDtypeStruct((), np.float32)
    return jtu.tree_unflatten(treedef, [placeholder] * treedef.num_leaves)


@functools.lru_cache(maxsize=256)
def leaf_paths(treedef: jtu.PyTreeDef) -> Tuple[str, ...]:
    r"""Returns the key paths of the leaves of a tree definition, in leaf order.

    Example:
        >>> leaf_paths(jax.tree.structure({'a': [0, 0], 'b': 0}))
        ("['a'][0]", "['a'][1]", "['b']")
    """

    paths = tuple(jtu.keystr(path) for path, _ in jtu.tree_leaves_with_path(skeleton(treedef)))
    if len(paths) != treedef.num_leaves:
        raise ValueError(f"cannot compute the key paths of {treedef}")
    return paths


@functools.lru_cache(maxsize=256)
def _path_set(treedef: jtu.PyTreeDef) -> frozenset:
    return frozenset(leaf_paths(treedef))


def partition(
    tree: PyTree,
    *filters: Filter,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Tuple[jtu.PyTreeDef, *Tuple[Dict[str, Any], ...]]:
    r"""Flattens a tree into a definition and path-leaf dictionaries, one per filter.

    A leaf goes to the dictionary of the first filter satisfied by its oldest ancestor
    (or itself); types are :func:`isinstance` checks. The last dictionary gets the
    leaves that satisfy no filter.

    Arguments:
        tree: A tree.
        filters: Types or predicates.
        is_leaf: Which nodes to treat as leaves.

    Returns:
        The tree definition and :py:`len(filters) + 1` dictionaries.

    Example:
        >>> tree = {'a': (jnp.zeros(2), 1), 'b': 'x'}
        >>> treedef, arrays, tuples, rest = partition(tree, jax.Array, tuple)
        >>> list(arrays), list(tuples), list(rest)
        ([], ["['a'][0]", "['a'][1]"], ["['b']"])
        >>> jax.tree.leaves(combine(treedef, arrays, tuples, rest)) == jax.tree.leaves(tree)
        True
    """

    if not filters and is_leaf is None:
        # The common case, and a hot one (every save and load): the paths of a
        # structure are computed once, then looked up by its tree definition.
        leaves, treedef = jtu.tree_flatten(tree)
        return treedef, dict(zip(leaf_paths(treedef), leaves))

    predicates = [_as_predicate(f) for f in filters]

    def matches(x: Any) -> bool:
        return any(p(x) for p in predicates) or (is_leaf is not None and is_leaf(x))

    nodes = jtu.tree_leaves_with_path(tree, is_leaf=matches)
    dicts: List[Dict[str, Any]] = [{} for _ in range(len(filters) + 1)]

    for path, node in nodes:
        index = next((i for i, p in enumerate(predicates) if p(node)), len(filters))
        for subpath, leaf in jtu.tree_leaves_with_path(node, is_leaf=is_leaf):
            dicts[index][jtu.keystr(path + subpath)] = leaf

    return jtu.tree_structure(tree, is_leaf=is_leaf), *dicts


@functools.lru_cache(maxsize=256)
def _hidden(treedef: jtu.PyTreeDef) -> Tuple[Tuple[str, Any], ...]:
    items = jtu.tree_leaves_with_path(skeleton(treedef), is_leaf=_is_mask)
    return tuple((jtu.keystr(path), x.value) for path, x in items if _is_mask(x))


def static_leaves(treedef: jtu.PyTreeDef) -> Dict[str, Any]:
    r"""Returns the values that a tree definition hides in :class:`Mask` wrappers (the
    non-array leaves of modules, and those of masked trees), by key path.

    They are the :py:`leaves` of the original inox's :class:`inox.nn.ModuleDef`, and
    :func:`combine` accepts them beside the arrays.

    Example:
        >>> static_leaves(jax.tree.structure(nn.Module(act='relu', w=jnp.ones(2), n=[3])))
        {'.act': 'relu', '.n[0]': 3}
    """

    return dict(_hidden(treedef))


def _key_list(keys: Sequence[str]) -> str:
    return ", ".join(f'"{key}"' for key in keys)


def _replace_hidden(treedef: jtu.PyTreeDef, arrays: Dict[str, Any], hidden: Dict[str, Any]) -> PyTree:
    r"""Rebuilds a tree with its arrays, and new values for some of its hidden leaves."""

    items, outer = jtu.tree_flatten_with_path(skeleton(treedef), is_leaf=_is_mask)
    leaves = []
    for path, x in items:
        key = jtu.keystr(path)
        if _is_mask(x):
            # Masked again: a masked tree stays masked, and modules and references
            # unmask their children when unflattened.
            leaves.append(Mask.wrap(hidden[key]) if key in hidden else x)
        else:
            leaves.append(arrays[key])
    return jtu.tree_unflatten(outer, leaves)


def combine(treedef: jtu.PyTreeDef, *dicts: Dict[str, Any]) -> PyTree:
    r"""Inverse of :func:`partition`: rebuilds a tree from path-leaf dictionaries.

    The dictionaries may also give values for the leaves that the definition hides
    (:func:`static_leaves`, the :py:`leaves` of a :class:`inox.nn.ModuleDef`), which
    replace them; those they leave out keep their values.

    Raises:
        KeyError: worded as the original inox's, ``Missing key(s) in leaves: "k", ...``
            (in leaf order) and ``Unexpected key(s) in leaves: "k", ...`` (in the order
            of the dictionaries); where keys are both missing and unexpected, the
            message has both sentences, missing first.

    Example:
        >>> treedef, leaves = partition({'a': 1, 'b': 2})
        >>> combine(treedef, {"['a']": 3, "['b']": 4})
        {'a': 3, 'b': 4}
        >>> combine(treedef, {"['a']": 3, "['c']": 4})
        Traceback (most recent call last):
          ...
        KeyError: 'Missing key(s) in leaves: "[\'b\']". Unexpected key(s) in leaves: "[\'c\']".'
        >>> treedef, arrays = partition(nn.Module(act='relu', w=jnp.ones(2)))
        >>> combine(treedef, arrays, {'.act': 'gelu'}).act
        'gelu'
    """

    merged: Dict[str, Any] = {}
    for d in dicts:
        merged.update(d)

    paths = leaf_paths(treedef)
    missing = [path for path in paths if path not in merged]
    if not missing and len(merged) == len(paths):  # the common case: nothing else given
        return jtu.tree_unflatten(treedef, [merged[path] for path in paths])

    known = _path_set(treedef)
    unexpected = [key for key in merged if key not in known]

    hidden: Dict[str, Any] = {}
    if unexpected:  # perhaps values for hidden leaves
        current = static_leaves(treedef)
        hidden = {key: merged[key] for key in unexpected if key in current}
        unexpected = [key for key in unexpected if key not in current]
        hidden = {key: value for key, value in hidden.items() if value is not current[key]}

    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"Missing key(s) in leaves: {_key_list(missing)}.")
        if unexpected:
            problems.append(f"Unexpected key(s) in leaves: {_key_list(unexpected)}.")
        raise KeyError(" ".join(problems))

    if hidden:
        return _replace_hidden(treedef, merged, hidden)
    return jtu.tree_unflatten(treedef, [merged[path] for path in paths])


def _raw_children(node: Any) -> List[Tuple[Any, Any]] | None:
    r"""Returns the ``(key, child)`` pairs of a node as it is, before any flattening
    transformation (masking, pruning), or :py:`None` for a leaf."""

    if hasattr(type(node), "tree_children"):
        return node.tree_children()

    # Only the node itself is entered: everything below it is a leaf. Testing
    # `x is not node` instead would enter a node that contains itself forever.
    entered = []

    def is_leaf(x: Any) -> bool:
        if entered:
            return True
        entered.append(x)
        return False

    children = jtu.tree_flatten_with_path(node, is_leaf=is_leaf)[0]
    if len(children) == 1 and children[0][0] == ():
        return None
    return [(path[0], child) for path, child in children]


def _counts_as_object(x: Any) -> bool:
    # Immutable scalars, strings and tuples are shared by the interpreter itself
    # (interning, constant folding): their identity says nothing about the model.
    return not isinstance(x, (type(None), bool, int, float, complex, str, bytes, tuple, Static))


def walk(tree: PyTree) -> Iterator[Tuple[KeyPath, Any, bool]]:
    r"""Visits every node of a tree depth-first, as ``(path, node, seen)`` triples.

    A node already visited (shared, or on a cycle) is yielded again with
    :py:`seen=True` but not entered again, so cyclic trees are fine.

    Example:
        >>> x = [1]
        >>> [(jtu.keystr(p), seen) for p, n, seen in walk({'a': x, 'b': x})][1:]
        [("['a']", False), ("['a'][0]", False), ("['b']", True)]
    """

    visited = set()
    stack: List[Tuple[KeyPath, Any]] = [((), tree)]

    while stack:
        path, node = stack.pop()
        if _counts_as_object(node):
            if id(node) in visited:
                yield path, node, True
                continue
            visited.add(id(node))

        yield path, node, False

        children = _raw_children(node)
        if children:
            stack.extend((path + (key,), child) for key, child in reversed(children))


def find_duplicates(tree: PyTree) -> List[List[str]]:
    r"""Returns the groups of key paths that hold the same Python object.

    Numbers, strings and tuples are not considered, as the interpreter shares them;
    arrays are. Cycles are allowed: a node that contains the root is grouped with the
    root, whose path is ``''``.

    Example:
        >>> w = jnp.ones(3)
        >>> find_duplicates({'a': w, 'b': [w], 'c': jnp.ones(3)})
        [["['a']", "['b'][0]"]]
        >>> a = []
        >>> b = {'c': a, 'd': None, 'e': ['f', a]}
        >>> b['h'] = b
        >>> find_duplicates(b)
        [['', "['h']"], ["['c']", "['e'][1]"]]
    """

    groups: Dict[int, List[str]] = {}
    for path, node, _ in walk(tree):
        if _counts_as_object(node):
            groups.setdefault(id(node), []).append(jtu.keystr(path))

    return [paths for paths in groups.values() if len(paths) > 1]


def _is_dataclass_instance(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def _array_repr(x: Any, typeonly: bool) -> str:
    if typeonly or isinstance(x, jax.ShapeDtypeStruct):
        dtype = getattr(x, "dtype", None)
        shape = ", ".join(map(str, getattr(x, "shape", ())))
        return f"{dtype}[{shape}]"
    return repr(x)


class _Printer:
    r"""Recursive pretty printer behind :func:`prepr`.

    Nodes may define :py:`__prepr__(self, printer, indent)`, which calls
    :py:`printer(child, column)` with the column at which the child starts, or, as in
    the original inox, :py:`tree_repr(self, **kwargs)`, which gets the keyword
    arguments of :func:`prepr`.
    """

    def __init__(self, linewidth: int, typeonly: bool):
        self.linewidth = linewidth
        self.typeonly = typeonly
        self.ancestors: set = set()
        # The indentation of the line being written, and the number of characters
        # that will follow the current node on its line (a comma): the column alone
        # does not tell where the lines of a broken block start, nor whether a
        # one-line form really fits.
        self.line = 0
        self.trailing = 0

    def items(self, pairs: List[Tuple[str, Any]], last: int = 0) -> List[str]:
        r"""Renders ``prefix + child`` items as they would be laid out in a broken
        block, one per line, two spaces deeper than the current line, each followed by
        a comma but the last, followed by :py:`last` characters."""

        line, trailing = self.line, self.trailing
        self.line = line + 2
        try:
            items = []
            for i, (prefix, child) in enumerate(pairs):
                self.trailing = 1 if i + 1 < len(pairs) else last
                items.append(prefix + self(child, self.line + len(prefix)))
            return items
        finally:
            self.line, self.trailing = line, trailing

    def block(self, opener: str, items: List[str], closer: str, indent: int) -> str:
        if not items:
            return opener + closer
        line = opener + ", ".join(items) + closer
        if "\n" not in line and indent + len(line) + self.trailing <= self.linewidth:
            return line
        body = ",\n".join("  " + item.replace("\n", "\n  ") for item in items)
        return f"{opener}\n{body}\n{closer}"

    def __call__(self, x: Any, indent: int = 0) -> str:
        if is_array(x):
            return _array_repr(x, self.typeonly)

        if id(x) in self.ancestors:
            return self.cycle(x)

        hook = getattr(type(x), "tree_repr", None)
        self.ancestors.add(id(x))
        try:
            if hook is not None and hook is not tree_repr:
                # A representation written for the original inox (a class's own).
                return x.tree_repr(linewidth=self.linewidth, typeonly=self.typeonly)
            return self.plain(x, indent)
        finally:
            self.ancestors.discard(id(x))

    def plain(self, x: Any, indent: int) -> str:
        r"""Renders a node by its :py:`__prepr__` or as a container, without looking at
        its own :py:`tree_repr` (its children's are honoured)."""

        method = getattr(type(x), "__prepr__", None)
        if method is not None:
            return method(x, self, indent)
        if isinstance(x, (list, tuple, dict, Namespace)) or _is_dataclass_instance(x):
            return self.container(x, indent)
        return repr(x)

    def cycle(self, x: Any) -> str:
        if isinstance(x, list):
            return "[...]"
        if isinstance(x, tuple):
            return "(...)"
        if isinstance(x, dict):
            return "{...}"
        return f"{type(x).__name__}(...)"

    def broken(self, opener: str, pairs: List[Tuple[str, Any]], closer: str) -> str:
        r"""Renders ``prefix + child`` items one per line, whatever their width, as the
        attributes of a namespace."""

        if not pairs:
            return opener + closer
        body = ",\n".join("  " + item.replace("\n", "\n  ") for item in self.items(pairs))
        return f"{opener}\n{body}\n{closer}"

    def namespace(self, x: Namespace) -> str:
        pairs = [(f"{k} = ", v) for k, v in sorted(vars(x).items()) if not k.startswith("_")]
        return self.broken(f"{type(x).__name__}(", pairs, ")")

    def container(self, x: Any, indent: int) -> str:
        if isinstance(x, Namespace):
            return self.namespace(x)
        if isinstance(x, dict):
            pairs = [(f"{k!r}: ", v) for k, v in x.items()]
            return self.block("{", self.items(pairs), "}", indent)
        if isinstance(x, list):
            return self.block("[", self.items([("", v) for v in x]), "]", indent)
        if _is_dataclass_instance(x):
            pairs = [(f"{f.name}=", getattr(x, f.name)) for f in dataclasses.fields(x) if f.repr]
            return self.block(f"{type(x).__name__}(", self.items(pairs), ")", indent)
        if hasattr(x, "_fields"):  # namedtuple
            pairs = [(f"{k}=", v) for k, v in zip(x._fields, x)]
            return self.block(f"{type(x).__name__}(", self.items(pairs), ")", indent)
        if len(x) == 1:
            # The comma of a 1-tuple sticks to its element, broken or not.
            (item,) = self.items([("", x[0])], last=1)
            return self.block("(", [item + ","], ")", indent)
        return self.block("(", self.items([("", v) for v in x]), ")", indent)


def prepr(tree: PyTree, linewidth: int = 88, typeonly: bool = True, **kwargs: Any) -> str:
    r"""Returns a pretty representation of a tree.

    Arrays are shown by dtype and shape, lines longer than :py:`linewidth` are broken
    with two-space indents, and cycles are shown as ``[...]`` or ``Name(...)``. Lists,
    tuples, dictionaries, named tuples, dataclasses and namespaces are entered.

    Arguments:
        tree: A tree.
        linewidth: The maximum line width.
        typeonly: Whether to show arrays by dtype and shape only, or by value.
        kwargs: Accepted and ignored, as :py:`tree_repr` methods written for the
            original inox pass theirs on.

    Example:
        >>> print(prepr({'weight': jnp.zeros((64, 64)), 'bias': jnp.zeros(64)}))
        {'weight': float32[64, 64], 'bias': float32[64]}
        >>> print(prepr({'weight': jnp.zeros((64, 64)), 'bias': jnp.zeros(64)}, linewidth=40))
        {
          'weight': float32[64, 64],
          'bias': float32[64]
        }
        >>> x = []; x.append(x); prepr(x)
        '[[...]]'
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class Point:
        ...     xy: jax.Array
        ...     name: str = 'p'
        >>> prepr(Point(jnp.zeros(2)))  # fields as a dataclass shows them, arrays by type
        "Point(xy=float32[2], name='p')"
    """

    return _Printer(linewidth, typeonly)(tree)
