r"""Pooling layers."""

from __future__ import annotations

__all__ = [
    "AvgPool",
    "MaxPool",
]

import jax
import jax.numpy as jnp
import math
import numbers

from jax import Array
from typing import Callable, Sequence, Tuple

from .module import Module
from .spatial import check_spatial, ndim_of, pad_pairs, per_axis


class Pool(Module):
    r"""Base class of the pooling layers: reduces the windows of the spatial axes of
    channels-last inputs with :py:`operator`, from :py:`initial(dtype)`.

    The number of spatial axes :math:`n` is the length of :py:`window_size` (an int
    means 1). Along spatial axis :math:`i`, the output has
    :math:`\lfloor (H_i + p_i - k_i) / s_i \rfloor + 1` elements, with :math:`k_i`,
    :math:`s_i` and :math:`p_i` the window size, stride and total padding.

    Arguments:
        window_size: The size of the window, per spatial axis.
        stride: The stride, per spatial axis or for all; the window size if
            :py:`None` (windows side by side).
        padding: The padding: an int for all sides, or a :py:`(low, high)` pair per
            spatial axis.

    Example:
        >>> class MinPool(nn.pooling.Pool):
        ...     operator = staticmethod(jax.lax.min)
        ...     @staticmethod
        ...     def initial(dtype):
        ...         return jnp.asarray(jnp.inf, dtype)
        >>> MinPool(2)(jnp.arange(4.0)[:, None])[:, 0]
        Array([0., 2.], dtype=float32)
    """

    operator: Callable[[Array, Array], Array]

    def __init__(
        self,
        window_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[Tuple[int, int]] = 0,
    ):
        if isinstance(window_size, numbers.Integral):
            window_size = (int(window_size),)
        n = len(window_size)

        self.window_size = per_axis(window_size, n, "window_size")
        self.stride = self.window_size if stride is None else per_axis(stride, n, "stride")
        self.padding = pad_pairs(padding, n)

    @staticmethod
    def initial(dtype: jnp.dtype) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array) -> Array:
        r"""
        Arguments:
            x: The input, of shape :py:`(*, H_1, ..., H_n, C)`.

        Returns:
            The output, of shape :py:`(*, H_1', ..., H_n', C)`.
        """

        n = len(self.window_size)
        check_spatial(x, n)

        # The batch and channel axes are windows of one element, unpadded.
        others = x.ndim - n - 1
        return jax.lax.reduce_window(
            x,
            self.initial(x.dtype),
            self.operator,
            window_dimensions=(1,) * others + self.window_size + (1,),
            window_strides=(1,) * others + self.stride + (1,),
            padding=((0, 0),) * others + self.padding + ((0, 0),),
        )

    ndim = ndim_of("window_size")


class AvgPool(Pool):
    r"""Averages the windows of the spatial axes; padded elements count as zeros.

    Its arguments are those of :class:`Pool`.

    Example:
        >>> pool = nn.AvgPool((2, 2))
        >>> pool(jnp.arange(16.0).reshape(4, 4, 1))[..., 0]
        Array([[ 2.5,  4.5],
               [10.5, 12.5]], dtype=float32)
    """

    operator = staticmethod(jax.lax.add)

    @staticmethod
    def initial(dtype: jnp.dtype) -> Array:
        return jnp.zeros((), dtype)

    def __call__(self, x: Array) -> Array:
        return super().__call__(x) / math.prod(self.window_size)


class MaxPool(Pool):
    r"""Takes the maximum of the windows of the spatial axes; padded elements are
    ignored.

    Its arguments are those of :class:`Pool`.

    Example:
        >>> pool = nn.MaxPool((2, 2), stride=1)
        >>> pool(jnp.arange(9.0).reshape(3, 3, 1))[..., 0]
        Array([[4., 5.],
               [7., 8.]], dtype=float32)
    """

    operator = staticmethod(jax.lax.max)

    @staticmethod
    def initial(dtype: jnp.dtype) -> Array:
        if jnp.issubdtype(dtype, jnp.integer):
            return jnp.asarray(jnp.iinfo(dtype).min, dtype)
        return jnp.asarray(-jnp.inf, dtype)
