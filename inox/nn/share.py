r"""Sharing modules

In JAX, implicit shared references (objects with the same Python id) to a node in a
tree are treated as distinct objects. Inox expresses sharing explicitly: during the
flattening of a :class:`Scope`, if several :class:`Reference` instances in the tree
share the same identification tag, the first occurrence (depth-first, sorted attribute
order) is preserved, while the following occurrences are pruned. During unflattening,
the pruned occurrences are filled in with the preserved occurrence, which preserves
their shared identity through every JAX transformation.

Example:
    >>> class WeightSharingMLP(nn.Scope):
    ...     def __init__(self, key):
    ...         keys = jax.random.split(key, 3)
    ...         self.l1 = nn.Linear(in_features=64, out_features=64, key=keys[0])
    ...         self.l3 = nn.Linear(in_features=64, out_features=64, key=keys[1])
    ...         self.l4 = nn.Linear(in_features=64, out_features=64, key=keys[2])
    ...         self.l1 = nn.Reference('l1', self.l1)
    ...         self.l2 = self.l1  # tied layer
    ...         self.l3.weight = nn.Reference('l3.weight', self.l3.weight)
    ...         self.l4.weight = self.l3.weight  # tied parameter
    ...         self.relu = nn.ReLU()
    ...     def __call__(self, x):
    ...         x = self.l1(x)
    ...         x = self.l2(self.relu(x))
    ...         x = self.l3(self.relu(x))
    ...         return self.l4(self.relu(x))
    >>> model = WeightSharingMLP(jax.random.key(0))
    >>> static, params, others = model.partition(nn.Parameter)
    >>> print(inox.tree.prepr(params))  # does not contain 'l2' and 'l4.weight'
    {
      '.l1.value.bias.value': float32[64],
      '.l1.value.weight.value': float32[64, 64],
      '.l3.bias.value': float32[64],
      '.l3.weight.value.value': float32[64, 64],
      '.l4.bias.value': float32[64]
    }
    >>> model = jax.tree.map(lambda x: x + 1, model)
    >>> model.l1 is model.l2, model.l3.weight is model.l4.weight
    (True, True)
"""

from __future__ import annotations

__all__ = [
    "Scope",
    "Reference",
    "Tie",
    "ties",
]

import jax
import jax.tree_util as jtu

from typing import Any, Dict, Hashable, Iterator, List, NamedTuple, Sequence, Tuple

from .module import Module
from ..errors import UsageError
from ..tree import KeyPath, PyTreeMeta, mask_children, prepr, tree_repr, unmask_children

_REFERENCE_ATTRS = ("tag", "obj", "value")

# The default of both names of a reference's object: None is an object to reference.
_UNSET = object()


def _is_boundary(x: Any) -> bool:
    return isinstance(x, (Reference, Scope))


class Scope(Module):
    r"""Subclass of :class:`inox.nn.module.Module` which handles shared object
    references within its scope.

    All references with the same tag in a scope stand for the same object: all but the
    first occurrence are pruned when the scope is flattened, and refilled when it is
    unflattened. A nested scope has its own tag namespace. Cyclic references are
    allowed, except for a scope referencing itself. A tag that refers to two different
    objects raises :class:`inox.errors.UsageError` when the scope is flattened.

    Arguments:
        kwargs: A name-value mapping.

    Example:
        >>> p = nn.Parameter(jnp.ones(2))
        >>> scope = nn.Scope(a=nn.Reference('p', p), b=nn.Reference('p', p))
        >>> jax.tree.leaves(scope)
        [Array([1., 1.], dtype=float32)]
        >>> scope = jax.jit(lambda s: s)(scope)
        >>> scope.a is scope.b
        True
    """

    def tree_flatten(self):
        children, names = self.tree_flatten_with_keys()
        return [value for _, value in children], names

    def tree_flatten_with_keys(self):
        children, names = super().tree_flatten_with_keys()
        first: Dict[Hashable, Tuple[Any, KeyPath]] = {}

        def prune(tree: Any, prefix: KeyPath) -> Any:
            def visit(path: KeyPath, x: Any) -> Any:
                path = prefix + path
                if x is self:
                    # Left as a leaf, JAX would flatten this scope inside itself forever.
                    raise ValueError(f"the scope contains itself at {jtu.keystr(path)}")
                if not isinstance(x, Reference):
                    return x  # a nested scope handles its own references
                if x.pruned:
                    raise ValueError(f"pruned reference {x.tag!r} at {jtu.keystr(path)} outside of its scope")
                if x.obj is self:
                    raise ValueError(f"the scope references itself at {jtu.keystr(path)} (tag {x.tag!r})")
                if x.tag in first:
                    obj, first_path = first[x.tag]
                    if x.obj is not obj:
                        raise UsageError(
                            f"tag {x.tag!r} refers to two different objects, at "
                            f"{jtu.keystr(first_path)} and {jtu.keystr(path)}"
                        )
                    return Reference._pruned(x.tag)
                first[x.tag] = (x.obj, path)
                return Reference(x.tag, prune(x.obj, path + (jtu.GetAttrKey("value"),)))

            return jtu.tree_map_with_path(visit, tree, is_leaf=_is_boundary)

        return [(key, prune(value, (key,))) for key, value in children], names

    @classmethod
    def tree_unflatten(cls, names: Tuple[str, ...], values: Sequence) -> Scope:
        preserved: Dict[Hashable, Reference] = {}

        def refill(tree: Any) -> Any:
            def visit(x: Any) -> Any:
                if not isinstance(x, Reference):
                    return x
                if x.pruned:
                    if x.tag not in preserved:
                        raise ValueError(f"pruned reference {x.tag!r} has no preserved occurrence")
                    return preserved[x.tag]
                preserved[x.tag] = x
                # In place: pruned occurrences inside x.obj (cycles) must get this very object.
                object.__setattr__(x, "obj", refill(x.obj))
                return x

            return jax.tree.map(visit, tree, is_leaf=_is_boundary)

        return super().tree_unflatten(names, [refill(v) for v in values])


class Reference(metaclass=PyTreeMeta):
    r"""Creates a reference to an object.

    A :class:`Reference` instance forwards :py:`__call__`, :py:`__iter__`,
    :py:`__getattr__`, :py:`__getitem__` (and their setting, deleting, :py:`len` and
    :py:`in` counterparts) to the object it references. For arithmetic operations
    (+, \*, ...), use :py:`ref.obj` directly instead. :py:`ref.value` is the same
    object as :py:`ref.obj`, as the child of a reference is keyed ``value`` in paths.

    See also:
        :class:`Scope`

    Arguments:
        tag: An identification tag.
        obj: The object to reference; inox 0.7's keyword :py:`value` is taken too
            (:py:`Reference(tag, value=obj)`).

    Example:
        >>> dummy = ["zero", nn.Parameter(jax.numpy.ones((2, 3)))]
        >>> dummy = Reference("dummy-list", dummy)
        >>> dummy  # repr preceded by asterisk
        *['zero', Parameter(float32[2, 3])]
        >>> len(dummy)
        2
        >>> "zero" in dummy
        True
        >>> dummy[1].shape
        (2, 3)
    """

    def __init__(self, tag: Hashable, obj: Any = _UNSET, *, value: Any = _UNSET):
        if value is not _UNSET:  # the name of the argument in inox 0.7
            if obj is not _UNSET:
                raise TypeError("Reference() got both 'obj' and 'value', two names of one argument")
            obj = value
        elif obj is _UNSET:
            raise TypeError("Reference() missing 1 required positional argument: 'obj'")
        try:
            hash(tag)
        except TypeError:
            raise TypeError(f"a reference tag must be hashable, got {tag!r}") from None
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "obj", obj)

    @classmethod
    def _pruned(cls, tag: Hashable) -> Reference:
        self = object.__new__(cls)
        object.__setattr__(self, "tag", tag)
        return self

    @property
    def pruned(self) -> bool:
        r"""Whether this is a pruned occurrence, waiting to be refilled by its scope."""

        return "obj" not in self.__dict__

    @property
    def value(self) -> Any:
        return self.obj

    def _target(self) -> Any:
        try:
            return self.__dict__["obj"]
        except KeyError:
            raise AttributeError(
                f"reference {self.tag!r} was pruned by its scope; it is refilled when the scope is unflattened"
            ) from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in _REFERENCE_ATTRS:
            raise AttributeError(name)
        return getattr(self._target(), name)

    def __setattr__(self, name: str, value: Any):
        if name == "value":
            name = "obj"
        if name in _REFERENCE_ATTRS:
            object.__setattr__(self, name, value)
        else:
            setattr(self._target(), name, value)

    def __delattr__(self, name: str):
        if name in _REFERENCE_ATTRS:
            raise AttributeError(f"cannot delete {name!r} of a reference")
        delattr(self._target(), name)

    def __call__(self, *args, **kwargs) -> Any:
        return self._target()(*args, **kwargs)

    def __getitem__(self, key: Any) -> Any:
        return self._target()[key]

    def __setitem__(self, key: Any, value: Any):
        self._target()[key] = value

    def __delitem__(self, key: Any):
        del self._target()[key]

    def __iter__(self) -> Iterator:
        return iter(self._target())

    def __len__(self) -> int:
        return len(self._target())

    def __contains__(self, item: Any) -> bool:
        return item in self._target()

    tree_repr = tree_repr  # the original inox's hook, for subclasses that call it

    def __repr__(self) -> str:
        return prepr(self)

    def __prepr__(self, printer, indent: int) -> str:
        if self.pruned:
            return f"#{self.tag}"  # as the original inox shows a pruned occurrence
        return "*" + printer(self.obj, indent + 1)

    def tree_children(self) -> List[Tuple[Any, Any]]:
        return [] if self.pruned else [(jtu.GetAttrKey("value"), self.obj)]

    def tree_flatten(self):
        if self.pruned:
            return (), (self.tag, True)
        return (mask_children(self.obj),), (self.tag, False)

    def tree_flatten_with_keys(self):
        if self.pruned:
            return (), (self.tag, True)
        return ((jtu.GetAttrKey("value"), mask_children(self.obj)),), (self.tag, False)

    @classmethod
    def tree_unflatten(cls, aux: Tuple[Hashable, bool], children: Sequence) -> Reference:
        tag, pruned = aux
        if pruned:
            return cls._pruned(tag)
        return cls(tag, unmask_children(children[0]))


class Tie(NamedTuple):
    r"""A tag of a scope: where its object is kept, and where it is pruned."""

    scope: str  #: Key path of the scope that owns the tag ('' for the root).
    tag: Hashable  #: The identification tag.
    path: str  #: Key path of the preserved (first) occurrence.
    aliases: List[str]  #: Key paths of the pruned occurrences.


def ties(tree: Any) -> List[Tie]:
    r"""Lists the ties declared by the scopes of a tree, in flattening order.

    Example:
        >>> p = nn.Parameter(jnp.ones(2))
        >>> ties({'s': nn.Scope(a=nn.Reference('p', p), b=[nn.Reference('p', p)])})
        [Tie(scope="['s']", tag='p', path="['s'].a", aliases=["['s'].b[0]"])]
    """

    found: List[Tie] = []

    def collect(tree: Any, prefix: KeyPath, scope: str | None, index: Dict[Hashable, Tie] | None):
        for path, x in jtu.tree_leaves_with_path(tree, is_leaf=_is_boundary):
            path = prefix + path
            if isinstance(x, Scope):
                children, _ = x.tree_flatten_with_keys()
                inner: Dict[Hashable, Tie] = {}
                for key, child in children:
                    collect(child, path + (key,), jtu.keystr(path), inner)
            elif isinstance(x, Reference):
                if x.pruned:
                    index[x.tag].aliases.append(jtu.keystr(path))
                    continue
                if index is not None:
                    index[x.tag] = Tie(scope, x.tag, jtu.keystr(path), [])
                    found.append(index[x.tag])
                collect(x.obj, path + (jtu.GetAttrKey("value"),), scope, index)

    collect(tree, (), None, None)
    return found
