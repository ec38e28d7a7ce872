r"""Mutable state, handled functionally.

Some layers keep values that change as they run but are not optimized, such as the
running statistics of batch normalization. Such a layer holds its initial value in a
:class:`StateEntry`. Before use, :func:`export_state` takes every entry out of the
model, leaving a hashable :class:`StateKey` in its place, and returns the values in a
``{key: value}`` dictionary. The layer then reads :py:`state[self.<attribute>]` and
returns an updated dictionary (see :func:`update_state`) next to its output, so the
model itself never changes and every JAX transformation applies.

Example:
    >>> model = nn.Sequential(nn.Linear(3, 4, key=jax.random.key(0)), nn.BatchNorm(4))
    >>> model, state = nn.export_state(model)
    >>> print(inox.tree.prepr(state))
    {StateKey('.layers[1].stats'): Statistics(mean=float32[4], var=float32[4])}
    >>> x = jax.random.normal(jax.random.key(1), (8, 3))
    >>> y, state = jax.jit(lambda m, x, s: m.layers[1](m.layers[0](x), s))(model, x, state)
    >>> y.shape
    (8, 4)
"""

from __future__ import annotations

__all__ = [
    "StateEntry",
    "StateKey",
    "export_state",
    "update_state",
]

import functools
import jax.tree_util as jtu

from typing import Any, Dict, Sequence, Tuple

from ..tree import PyTreeMeta, mask_children, prepr, unmask_children

PyTree = Any


class StateEntry(metaclass=PyTreeMeta):
    r"""Wrapper marking the initial value of a state, to be taken out of its tree by
    :func:`export_state`.

    Its child is keyed ``value`` in paths, like the one of a parameter.

    Arguments:
        value: A tree of arrays.

    Example:
        >>> entry = nn.StateEntry((jnp.zeros(3), jnp.ones(3)))
        >>> entry
        StateEntry(value=(float32[3], float32[3]))
        >>> [jtu.keystr(path) for path, _ in jtu.tree_leaves_with_path(entry)]
        ['.value[0]', '.value[1]']
    """

    def __init__(self, value: PyTree):
        self.value = value

    def __repr__(self) -> str:
        return prepr(self)

    def __prepr__(self, printer, indent: int) -> str:
        # Shown as the original inox's named tuple shows itself: StateEntry(value=...).
        opener = f"{type(self).__name__}(value="
        return f"{opener}{printer(self.value, indent + len(opener))})"

    def tree_flatten(self):
        # Masked like a module's children: a state may hold non-array leaves too.
        return (mask_children(self.value),), None

    def tree_flatten_with_keys(self):
        return ((jtu.GetAttrKey("value"), mask_children(self.value)),), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: Sequence) -> StateEntry:
        self = object.__new__(cls)
        self.value = unmask_children(children[0])
        return self


def is_entry(x: Any) -> bool:
    r"""Returns whether :py:`x` is a :class:`StateEntry` (a predicate for
    :py:`is_leaf`); public, but not exported to :mod:`inox.nn`, as in the original.

    Example:
        >>> from inox.nn.state import is_entry
        >>> is_entry(nn.StateEntry(jnp.zeros(1))), is_entry(jnp.zeros(1))
        (True, False)
    """

    return isinstance(x, StateEntry)


@functools.total_ordering
class StateKey:
    r"""Immutable, hashable key of a state in the dictionary of :func:`export_state`.

    It is not a PyTree: in a module it is a static leaf, part of the tree definition.
    Keys are ordered by their string, so that state dictionaries can be flattened.

    Arguments:
        key: The key path of the exported :class:`StateEntry`.

    Example:
        >>> k = nn.StateKey('.norm.stats')
        >>> k, k == nn.StateKey('.norm.stats'), jax.tree.leaves({k: jnp.ones(1)})
        (StateKey('.norm.stats'), True, [Array([1.], dtype=float32)])
    """

    __slots__ = ("key",)

    def __init__(self, key: str):
        object.__setattr__(self, "key", key)

    def __setattr__(self, name: str, value: Any):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self):
        # The default pickling protocol would set the slot, which is forbidden.
        return type(self), (self.key,)

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and self.key == other.key

    def __lt__(self, other: Any) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.key < other.key

    def __hash__(self) -> int:
        return hash((type(self), self.key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"

    def tree_repr(self, **kwargs: Any) -> str:
        r"""Its representation, under the name of the original inox's hook."""

        return repr(self)


def export_state(tree: PyTree) -> Tuple[PyTree, Dict[StateKey, PyTree]]:
    r"""Takes the states out of a tree.

    Every :class:`StateEntry` is replaced by a :class:`StateKey` named after the key
    path of the entry. An entry shared through a :class:`inox.nn.Scope` is exported
    once.

    Arguments:
        tree: A tree, typically a module.

    Returns:
        The tree without entries and the ``{key: value}`` state dictionary.

    Example:
        >>> tree = {'bn': nn.BatchNorm(2), 'w': jnp.ones(2)}
        >>> tree, state = nn.export_state(tree)
        >>> tree['bn'].stats, list(state)
        (StateKey("['bn'].stats"), [StateKey("['bn'].stats")])
    """

    state: Dict[StateKey, PyTree] = {}

    def export(path: Tuple[Any, ...], x: Any) -> Any:
        if not isinstance(x, StateEntry):
            return x
        key = StateKey(jtu.keystr(path))
        state[key] = x.value
        return key

    tree = jtu.tree_map_with_path(export, tree, is_leaf=lambda x: isinstance(x, StateEntry))
    return tree, state


def update_state(state: Dict[StateKey, PyTree], mutation: Dict[StateKey, PyTree]) -> Dict[StateKey, PyTree]:
    r"""Returns a copy of a state dictionary, updated with a mutation.

    The input dictionary is left as it is, so that the functions that read a state
    remain pure.

    Arguments:
        state: A state dictionary.
        mutation: The entries to replace or add.

    Example:
        >>> k = nn.StateKey('.counter')
        >>> state = {k: jnp.asarray(0)}
        >>> new = nn.update_state(state, {k: state[k] + 1})
        >>> state[k], new[k]
        (Array(0, dtype=int32, weak_type=True), Array(1, dtype=int32, weak_type=True))
    """

    return {**state, **mutation}
