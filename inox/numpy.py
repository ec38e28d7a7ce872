r"""NumPy-like array utilities: reshaping axis ranges, and vectorizing functions over
leading batch axes."""

from __future__ import annotations

__all__ = [
    "flatten",
    "unflatten",
    "vectorize",
]

import functools
import jax
import jax.numpy as jnp

from jax import Array
from typing import Any, Callable, Iterable, List, Sequence

from .errors import UsageError


def flatten(x: Array, start: int = 0, stop: int | None = None) -> Array:
    r"""Merges the axes :py:`start` to :py:`stop` (excluded) of an array into one.

    Arguments:
        x: An array.
        start: The first axis to merge.
        stop: The axis after the last to merge; :py:`x.ndim` if :py:`None`.

    Example:
        >>> flatten(jnp.zeros((2, 3, 5)), 0, 2).shape
        (6, 5)
        >>> flatten(jnp.zeros((2, 3, 5)), 1).shape
        (2, 15)
    """

    start, stop, _ = slice(start, stop).indices(x.ndim)
    return x.reshape(*x.shape[:start], -1, *x.shape[stop:])


def unflatten(x: Array, axis: int, shape: Sequence[int]) -> Array:
    r"""Splits an axis of an array into several, of the given shape.

    Arguments:
        x: An array.
        axis: The axis to split.
        shape: The shape it is split into (one entry may be -1).

    Example:
        >>> unflatten(jnp.zeros((6, 5)), 0, (2, 3)).shape
        (2, 3, 5)
        >>> unflatten(jnp.zeros((6, 5)), -1, (5, 1)).shape
        (6, 5, 1)
    """

    axis = axis % x.ndim
    return x.reshape(*x.shape[:axis], *shape, *x.shape[axis + 1 :])


def vectorize(
    f: Callable,
    ndims: int | Sequence[int],
    exclude: Iterable[int] = (),
) -> Callable:
    r"""Vectorizes a function over the leading axes of its arguments, with
    broadcasting.

    Like :func:`jax.numpy.vectorize`, but the signature is the number of core (trailing)
    axes of each argument instead of their names: the axes before them are batch axes,
    broadcast against each other and mapped with :func:`jax.vmap`. Keyword arguments
    are passed as they are.

    Arguments:
        f: The function.
        ndims: The number of core axes of every positional argument, or of each one.
        exclude: The indices of positional arguments passed as they are, not
            vectorized (and not counted in :py:`ndims`).

    Raises:
        UsageError: when the counts of core axes do not fit the arguments (an
            :class:`AssertionError` too, as the original inox asserts there).

    Example:
        >>> mvp = vectorize(jnp.dot, (2, 1))  # matrix-vector products
        >>> mvp(jnp.ones((5, 3)), jnp.ones((16, 3))).shape
        (16, 5)
        >>> scale = vectorize(lambda x, s: x * s, 1, exclude=[1])
        >>> scale(jnp.ones((4, 2)), 3.0).shape
        (4, 2)
        >>> mvp(jnp.ones(3), jnp.ones(3))  # a vector has no 2 core axes
        Traceback (most recent call last):
          ...
        inox.errors.UsageError: core dimensions [2, 1] do not fit arguments of shapes [(3,), (3,)]
    """

    exclude = frozenset(exclude)

    @functools.wraps(f)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        mapped = [i for i in range(len(args)) if i not in exclude]
        arrays = [jnp.asarray(args[i]) for i in mapped]

        cores = [ndims] * len(arrays) if isinstance(ndims, int) else list(ndims)
        if len(cores) != len(arrays):
            raise UsageError(f"{len(cores)} core dimension counts for {len(arrays)} vectorized arguments")
        if any(not 0 <= n <= x.ndim for x, n in zip(arrays, cores)):
            raise UsageError(f"core dimensions {cores} do not fit arguments of shapes {[x.shape for x in arrays]}")

        batches = [x.shape[: x.ndim - n] for x, n in zip(arrays, cores)]
        batch = jnp.broadcast_shapes(*batches)

        def call(*xs: Array) -> Any:
            full = list(args)
            for i, x in zip(mapped, xs):
                full[i] = x
            return f(*full, **kwargs)

        # Axes of size 1 are broadcast: dropped, and not mapped. The innermost vmap
        # maps the last batch axis, the outermost the first.
        squeezed = [jnp.squeeze(x, [a for a, size in enumerate(b) if size == 1]) for x, b in zip(arrays, batches)]
        g = call
        for depth in range(1, len(batch) + 1):
            in_axes: List[int | None] = [0 if len(b) >= depth and b[-depth] != 1 else None for b in batches]
            g = jax.vmap(g, in_axes=in_axes, axis_size=batch[-depth])

        return g(*squeezed)

    return wrapped
