r"""Axis manipulations written as `einops <https://einops.rocks>`_ patterns.

Each layer is a thin wrapper around the function of :mod:`einops` of the same name,
so the patterns mean exactly what they mean there.
"""

from __future__ import annotations

__all__ = [
    "Rearrange",
    "Reduce",
    "Repeat",
]

import einops

from jax import Array
from typing import Callable

from .module import Module


class Pattern(Module):
    r"""Base class of the einops layers: calls :py:`operation`, a function of
    :mod:`einops`, with the input, the pattern and the lengths of axes.

    Arguments:
        pattern: The einops pattern.
        lengths: The lengths of the axes that the input shape does not tell.

    Example:
        >>> class Transpose(nn.einops.Pattern):
        ...     operation = staticmethod(einops.rearrange)
        >>> Transpose('A B -> B A')(jnp.zeros((2, 3))).shape
        (3, 2)
    """

    operation: Callable[..., Array]

    def __init__(self, pattern: str, **lengths: int):
        self.pattern = pattern
        self.lengths = lengths

    def __call__(self, x: Array) -> Array:
        return self.operation(x, self.pattern, **self.lengths)


class Rearrange(Pattern):
    r"""Moves, merges and splits axes (:func:`einops.rearrange`).

    Arguments:
        pattern: The pattern, such as :py:`'A B C -> C (A B)'`, which moves the last
            axis first and merges the two others.
        lengths: The lengths of the axes that the input shape does not tell.

    Example:
        >>> nn.Rearrange('A B C -> C (A B)')(jnp.zeros((2, 3, 5))).shape
        (5, 6)
        >>> nn.Rearrange('(A B) C -> A B C', A=2)(jnp.zeros((6, 5))).shape
        (2, 3, 5)
    """

    operation = staticmethod(einops.rearrange)


class Reduce(Pattern):
    r"""Reduces axes (:func:`einops.reduce`).

    Arguments:
        pattern: The pattern, such as :py:`'A B C -> A C'`, which reduces the second
            axis.
        reduction: The reduction: :py:`'sum'`, :py:`'mean'`, :py:`'max'`, ...
        lengths: The lengths of the axes that the input shape does not tell.

    Example:
        >>> nn.Reduce('A B C -> A C', 'max')(jnp.ones((2, 3, 5))).shape
        (2, 5)
        >>> nn.Reduce('A B -> A')(jnp.ones((2, 3)))
        Array([3., 3.], dtype=float32)
    """

    def __init__(self, pattern: str, reduction: str = "sum", **lengths: int):
        super().__init__(pattern, **lengths)
        self.reduction = reduction

    def __call__(self, x: Array) -> Array:
        return einops.reduce(x, self.pattern, self.reduction, **self.lengths)


class Repeat(Pattern):
    r"""Inserts or tiles axes (:func:`einops.repeat`).

    Arguments:
        pattern: The pattern, such as :py:`'A B -> A C B'`, which inserts an axis.
        lengths: The lengths of the new axes, and of those that the input shape does
            not tell.

    Example:
        >>> nn.Repeat('A B -> A C B', C=4)(jnp.zeros((2, 3))).shape
        (2, 4, 3)
    """

    operation = staticmethod(einops.repeat)
