r"""JAX transformations lifted to trees with non-array leaves.

Each transformation of this module is the JAX one applied through :func:`automask`:
the non-array leaves (numbers, strings, functions, ...) of the arguments and results
are masked (see :func:`inox.tree.mask`), so they are static, part of the tree
definition. Modules hide their non-array leaves by themselves, so :func:`jax.jit` and
the others take them too; these lifted versions also take plain trees of mixed leaves.

Example:
    >>> @inox.jit
    ... def scale(tree):
    ...     return tree['x'] * tree['factor']
    >>> scale({'x': jnp.ones(2), 'factor': 3})  # the int is static, not traced
    Array([3., 3.], dtype=float32)
"""

from __future__ import annotations

__all__ = [
    "automask",
    "jit",
    "grad",
    "value_and_grad",
    "jacfwd",
    "jacrev",
    "hessian",
    "checkpoint",
    "vmap",
    "pmap",
]

import functools
import jax
import weakref

from typing import Any, Callable, MutableMapping

from .tree import mask, unmask

# Each wrapper refers to itself under the name of its side. The reference, not a flag:
# functools.wraps copies attributes, so a transformation of a wrapper (jax.jit's
# result, say) has the attribute too, but it refers to another object.
_INNER = "__inox_inner__"
_OUTER = "__inox_outer__"

_inner_cache: MutableMapping[Callable, Callable] = weakref.WeakKeyDictionary()


def _is(fun: Callable, side: str) -> bool:
    return getattr(fun, side, None) is fun


def inner(fun: Callable) -> Callable:
    r"""Returns the function as a transformation sees it: it unmasks its arguments and
    masks its results. The inverse of :func:`outer`.

    The same wrapper is returned for the same function, so that transformations which
    cache by function (:func:`jax.jit`) compile it once.

    Example:
        >>> from inox.tree import Mask
        >>> inner(lambda n: n + 1)(Mask(1))
        Mask(2)
        >>> f = len
        >>> inner(f) is inner(f), outer(inner(f)) is f
        (True, True)
    """

    if _is(fun, _INNER):
        return fun
    if _is(fun, _OUTER):
        return fun.__wrapped__

    try:
        return _inner_cache[fun]
    except (KeyError, TypeError):  # TypeError: not weakly referenceable, or unhashable
        pass

    @functools.wraps(fun)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return mask(fun(*unmask(args), **unmask(kwargs)))

    setattr(wrapped, _INNER, wrapped)
    try:
        _inner_cache[fun] = wrapped
    except TypeError:
        pass
    return wrapped


def outer(fun: Callable) -> Callable:
    r"""Returns a transformed function as its caller sees it: it masks its arguments
    and unmasks its results. The inverse of :func:`inner`.

    Example:
        >>> from inox.tree import Mask
        >>> outer(lambda m: (m, type(m).__name__))('leaf')
        ('leaf', 'Mask')
        >>> f = len
        >>> inner(outer(f)) is f
        True
    """

    if _is(fun, _OUTER):
        return fun
    if _is(fun, _INNER):
        return fun.__wrapped__

    @functools.wraps(fun)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return unmask(fun(*mask(args), **mask(kwargs)))

    setattr(wrapped, _OUTER, wrapped)
    return wrapped


def automask(transform: Callable) -> Callable:
    r"""Lifts a transformation so that it treats the non-array leaves of arguments
    and results as static.

    :py:`automask(jax.tf)(f, ...)(x)` computes
    :py:`unmask(jax.tf(lambda x: mask(f(unmask(x))), ...)(mask(x)))`.

    Arguments:
        transform: A transformation, such as :func:`jax.jit`: a function of a
            function and options, that returns a function.

    Example:
        >>> vmap = automask(jax.vmap)
        >>> out = vmap(lambda x, name: (x * 2, name))(jnp.ones(3), 'double')
        >>> out
        (Array([2., 2., 2.], dtype=float32), 'double')
    """

    @functools.wraps(transform)
    def lifted(fun: Callable, *args: Any, **kwargs: Any) -> Callable:
        return outer(transform(inner(fun), *args, **kwargs))

    return lifted


jit = automask(jax.jit)
grad = automask(jax.grad)
value_and_grad = automask(jax.value_and_grad)
jacfwd = automask(jax.jacfwd)
jacrev = automask(jax.jacrev)
hessian = automask(jax.hessian)
checkpoint = automask(jax.checkpoint)
vmap = automask(jax.vmap)
pmap = automask(jax.pmap)
