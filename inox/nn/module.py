r"""Base modules and parameters.

A :class:`Module` is a PyTree whose branches are its attributes. Its non-array leaves
(hyper-parameters such as sizes, flags or functions) are hidden in its tree definition
when it is flattened, so modules go through :func:`jax.jit`, :func:`jax.grad` and
:func:`jax.vmap` as they are.

Example:
    >>> class Affine(nn.Module):
    ...     def __init__(self, features, key):
    ...         self.features = features  # static leaf
    ...         self.scale = nn.Parameter(jax.random.normal(key, (features,)))
    ...         self.shift = nn.Parameter(jnp.zeros(features))
    ...     def __call__(self, x):
    ...         return x * self.scale() + self.shift()
    >>> model = Affine(3, jax.random.key(0))
    >>> model
    Affine(
      features = 3,
      scale = Parameter(float32[3]),
      shift = Parameter(float32[3])
    )
    >>> jax.tree.leaves(model)  # no 3
    [Array([...], dtype=float32), Array([0., 0., 0.], dtype=float32)]
    >>> jax.jit(lambda m, x: m(x))(model, jnp.ones(3)).shape
    (3,)
"""

from __future__ import annotations

# is_module is public, but not exported to inox.nn, as in the original inox.
__all__ = [
    "Module",
    "ModuleDef",
    "Parameter",
    "ComplexParameter",
]

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from typing import Any, Dict, Iterator, Sequence, Tuple

from ..tree import (
    Filter,
    Namespace,
    PyTreeMeta,
    combine,
    leaf_paths,
    mask_children,
    partition,
    prepr,
    skeleton,
    static_leaves,
    unmask_children,
    walk,
)


def is_module(x: Any) -> bool:
    r"""Returns whether :py:`x` is a :class:`Module` (a predicate for :py:`is_leaf`).

    Example:
        >>> is_module(nn.ReLU()), is_module(nn.Parameter(jnp.ones(1)))
        (True, False)
    """

    return isinstance(x, Module)


class Module(Namespace):
    r"""Base class for all modules.

    Subclasses set their layers, parameters and hyper-parameters as attributes in
    :py:`__init__` and define :py:`__call__`. A module is represented with one
    attribute per line (see :class:`inox.tree.Namespace`).

    Arguments:
        kwargs: A name-value mapping.
    """

    def tree_flatten(self):
        values, names = super().tree_flatten()
        return [mask_children(v) for v in values], names

    def tree_flatten_with_keys(self):
        children, names = super().tree_flatten_with_keys()
        return [(key, mask_children(v)) for key, v in children], names

    @classmethod
    def tree_unflatten(cls, names: Tuple[str, ...], values: Sequence) -> Module:
        return super().tree_unflatten(names, [unmask_children(v) for v in values])

    def train(self, mode: bool = True) -> None:
        r"""Toggles the training mode of this module and of all its submodules.

        Modules that behave differently in training and evaluation (dropout, batch
        normalization) have a :py:`training` attribute, which this sets.

        Arguments:
            mode: Whether to turn training mode on or off.

        Example:
            >>> model = nn.Module(dropout=nn.TrainingDropout())
            >>> model
            Module(
              dropout = TrainingDropout(
                p = float32[]
              )
            )
            >>> model.train(False)
            >>> model
            Module(
              dropout = TrainingDropout(
                p = float32[],
                training = False
              )
            )
        """

        for _, node, seen in walk(self):
            if not seen and isinstance(node, Module) and hasattr(node, "training"):
                node.training = mode

    def partition(self, *filters: Filter) -> Tuple[ModuleDef, *Tuple[Dict[str, Any], ...]]:
        r"""Splits the module into its static definition and path-array dictionaries.

        Arguments:
            filters: Types or predicates (see :func:`inox.tree.partition`); the last
                dictionary gets the arrays that satisfy none.

        Returns:
            The module definition and :py:`len(filters) + 1` dictionaries.

        Example:
            >>> model = nn.Linear(3, 5, key=jax.random.key(0))
            >>> modef, params, others = model.partition(nn.Parameter)
            >>> params
            {'.bias.value': Array([0., 0., 0., 0., 0.], dtype=float32), '.weight.value': Array(...)}
            >>> modef(params, others)
            Linear(
              bias = Parameter(float32[5]),
              weight = Parameter(float32[3, 5])
            )
        """

        treedef, *dicts = partition(self, *filters)
        return ModuleDef(treedef), *dicts


class ModuleDef(metaclass=PyTreeMeta):
    r"""The static definition of a module: calling it with the array dictionaries of
    :meth:`Module.partition` rebuilds the module.

    A module definition is hashable and leafless, so it can be a static argument of
    :func:`jax.jit`. As the original inox's (a named tuple), it has the fields
    :py:`treedef` and :py:`leaves` (the non-array leaves by key path, hidden in the
    tree definition here), and unpacks as the pair of them.

    Arguments:
        treedef: The tree definition of a module.
        leaves: Values for non-array leaves of the module, by key path, that replace
            those in the tree definition (see :func:`inox.tree.static_leaves`).

    Example:
        >>> model = nn.Module(act='relu', w=nn.Parameter(jnp.ones(2)))
        >>> static, params = model.partition()
        >>> static.leaves
        {'.act': 'relu'}
        >>> treedef, leaves = static  # as a named tuple
        >>> inox.tree.combine(treedef, leaves, params).act
        'relu'
        >>> nn.ModuleDef(treedef, {'.act': 'gelu'})(params).act
        'gelu'
    """

    _fields = ("treedef", "leaves")

    def __init__(self, treedef: jtu.PyTreeDef, leaves: Dict[str, Any] | None = None):
        if leaves:
            # Replaced once, here: the definition then holds them, and hashes with them.
            _, placeholders = partition(skeleton(treedef))
            treedef = jtu.tree_structure(combine(treedef, placeholders, leaves))
        self.treedef = treedef

    def __call__(self, *dicts: Dict[str, Any]) -> Module:
        r"""Rebuilds the module.

        Raises:
            KeyError: naming the missing and the unexpected keys, as
                :func:`inox.tree.combine`.
        """

        return combine(self.treedef, *dicts)

    @property
    def leaves(self) -> Dict[str, Any]:
        r"""The non-array leaves of the module, by key path (a new dictionary)."""

        return static_leaves(self.treedef)

    @property
    def paths(self) -> Tuple[str, ...]:
        r"""The key paths of the arrays of the module, in flattening order."""

        return leaf_paths(self.treedef)

    # The named tuple's protocol: unpacking, indexing, length, _asdict and _replace.

    def __iter__(self) -> Iterator[Any]:
        return iter((self.treedef, self.leaves))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int | slice) -> Any:
        return (self.treedef, self.leaves)[index]

    def _asdict(self) -> Dict[str, Any]:
        return {"treedef": self.treedef, "leaves": self.leaves}

    def _replace(self, **fields: Any) -> ModuleDef:
        unknown = sorted(set(fields).difference(self._fields))
        if unknown:
            raise ValueError(f"Got unexpected field names: {unknown!r}")
        return ModuleDef(fields.get("treedef", self.treedef), fields.get("leaves"))

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ModuleDef) and self.treedef == other.treedef

    def __hash__(self) -> int:
        return hash(self.treedef)

    def __repr__(self) -> str:
        return f"ModuleDef({self.treedef.num_leaves} arrays)"

    def tree_flatten(self):
        return (), self.treedef

    def tree_flatten_with_keys(self):
        return (), self.treedef

    @classmethod
    def tree_unflatten(cls, treedef: jtu.PyTreeDef, children: Sequence) -> ModuleDef:
        return cls(treedef)


class Parameter(Namespace):
    r"""Wrapper marking an optimizable array.

    Calling a parameter returns its array, and the attributes of the array (shape,
    dtype, ...) are read through it; its key path ends in ``.value``. A value that is
    not a JAX array (a number, a list, a NumPy array) is converted with
    :func:`jax.numpy.asarray`, as in the original inox: a NumPy :py:`float64` array
    becomes a :py:`float32` one unless 64-bit mode is on. Abstract arrays
    (:class:`jax.ShapeDtypeStruct`) are kept, for abstract models.

    Arguments:
        value: An array.

    Example:
        >>> p = nn.Parameter(jnp.ones((3, 5)))
        >>> p
        Parameter(float32[3, 5])
        >>> p().sum(), p.shape, p.dtype
        (Array(15., dtype=float32), (3, 5), dtype('float32'))
        >>> nn.Parameter(np.zeros(2))  # a NumPy float64 array, as a JAX array
        Parameter(float32[2])
    """

    # The attributes the parameter stores; they are never looked up in its value.
    _stored: Tuple[str, ...] = ("value",)

    def __init__(self, value: jax.Array):
        # Tracers are jax.Array instances too, so parameters built under jit stay traced.
        self.value = value if isinstance(value, (jax.Array, jax.ShapeDtypeStruct)) else jnp.asarray(value)

    def __call__(self) -> jax.Array:
        return self.value

    def __getattr__(self, name: str) -> Any:
        # Only for names that are not attributes; dunders and the stored attributes
        # themselves are not forwarded, lest a half-built parameter (pickle, copy)
        # look them up in its missing value forever.
        if name.startswith("__") or name in self._stored:
            raise AttributeError(name)
        return getattr(self.value, name)

    def __prepr__(self, printer, indent: int) -> str:
        name = type(self).__name__
        return f"{name}({printer(self.value, indent + len(name) + 1)})"


class ComplexParameter(Parameter):
    r"""Parameter holding a complex array as two real ones, :py:`real` and
    :py:`imag`, so that real-valued optimizers update both parts.

    Its :py:`value` is the complex array; its key paths end in ``.imag`` and
    ``.real``.

    Arguments:
        value: A complex array, or a number.

    Example:
        >>> p = nn.ComplexParameter(jnp.ones((3, 5)) + 2j)
        >>> p
        ComplexParameter(complex64[3, 5])
        >>> p.real.dtype, p()[0, 0]
        (dtype('float32'), Array(1.+2.j, dtype=complex64))
        >>> [jtu.keystr(path) for path, _ in jtu.tree_leaves_with_path(p)]
        ['.imag', '.real']
    """

    _stored = ("value", "real", "imag")

    def __init__(self, value: jax.Array):
        value = jnp.asarray(value)
        self.real = jnp.real(value)
        self.imag = jnp.imag(value)

    @property
    def value(self) -> jax.Array:
        real, imag = self.real, self.imag
        if isinstance(real, jax.ShapeDtypeStruct) or isinstance(imag, jax.ShapeDtypeStruct):
            return jax.eval_shape(jax.lax.complex, real, imag)  # an abstract parameter
        return jax.lax.complex(real, imag)
