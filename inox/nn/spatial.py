r"""The shape conventions of the layers over spatial axes (convolutions, pooling,
padding, resampling): inputs of shape :py:`(*batch, H_1, ..., H_n, C)`, channels last,
and per-axis arguments given for each of the :math:`n` spatial axes or once for all.

These helpers are shared by those layers; they are not layers themselves, so
:mod:`inox.nn` does not export them.
"""

from __future__ import annotations

__all__ = [
    "per_axis",
    "pad_pairs",
    "check_spatial",
    "ndim_of",
]

import numbers

from jax import Array
from typing import Sequence, Tuple


def per_axis(x: int | Sequence[int], n: int, name: str) -> Tuple[int, ...]:
    r"""Returns a per-axis argument as a tuple of :py:`n` ints; an int is repeated.

    Tuples, not lists: the value is a hidden hyper-parameter of its module, part of
    its tree definition, which :func:`jax.jit` hashes.

    Arguments:
        x: An int, or one int per axis.
        n: The number of spatial axes.
        name: The argument's name, for the error message.

    Raises:
        ValueError: when :py:`x` does not have :py:`n` values.

    Example:
        >>> per_axis(2, 3, 'stride'), per_axis([1, 2], 2, 'stride')
        ((2, 2, 2), (1, 2))
        >>> per_axis([1, 2], 3, 'stride')
        Traceback (most recent call last):
          ...
        ValueError: expected 3 value(s) for stride, got (1, 2)
    """

    if isinstance(x, numbers.Integral):
        return (int(x),) * n
    x = tuple(int(v) for v in x)
    if len(x) != n:
        raise ValueError(f"expected {n} value(s) for {name}, got {x}")
    return x


def pad_pairs(padding: int | Sequence[int | Tuple[int, int]], n: int) -> Tuple[Tuple[int, int], ...]:
    r"""Returns a padding as one :py:`(low, high)` pair per axis: an int pads every side
    by that much, and an int in a sequence pads both ends of its axis.

    Arguments:
        padding: An int, or an int or a pair per axis.
        n: The number of spatial axes.

    Example:
        >>> pad_pairs(1, 2), pad_pairs([(0, 1), 2], 2)
        (((1, 1), (1, 1)), ((0, 1), (2, 2)))
    """

    if isinstance(padding, numbers.Integral):
        padding = [padding] * n
    pairs = tuple((p, p) if isinstance(p, numbers.Integral) else tuple(p) for p in padding)
    if len(pairs) != n:
        raise ValueError(f"expected {n} padding value(s), got {padding}")
    return tuple((int(lo), int(hi)) for lo, hi in pairs)


def check_spatial(x: Array, n: int) -> None:
    r"""Checks that an input has :py:`n` spatial axes and a channel axis, at least.

    Raises:
        ValueError: when it has fewer axes.

    Example:
        >>> check_spatial(jnp.zeros((8, 8, 3)), 2)
        >>> check_spatial(jnp.zeros((8, 3)), 2)
        Traceback (most recent call last):
          ...
        ValueError: 2 spatial axes and a channel axis expected, got shape (8, 3)
    """

    if x.ndim < n + 1:
        raise ValueError(f"{n} spatial axes and a channel axis expected, got shape {x.shape}")


def ndim_of(attr: str) -> property:
    r"""The property :py:`ndim` of a layer whose attribute :py:`attr` has one value per
    spatial axis: the number of axes of an unbatched input, spatial axes and channels,
    as the original inox's layers tell it.

    Example:
        >>> class Blur(nn.Module):
        ...     ndim = ndim_of('kernel_size')
        >>> Blur(kernel_size=(3, 3)).ndim
        3
    """

    def ndim(self) -> int:
        return len(getattr(self, attr)) + 1

    return property(ndim, doc="The number of axes of an unbatched input: its spatial axes and channels.")
