r"""Padding layers."""

from __future__ import annotations

__all__ = [
    "Pad",
]

import jax.numpy as jnp

from jax import Array
from typing import Sequence, Tuple

from .module import Module
from .spatial import check_spatial, ndim_of, pad_pairs


class Pad(Module):
    r"""Pads the spatial axes of channels-last inputs (:func:`jax.numpy.pad`).

    The number of spatial axes :math:`n` is the length of :py:`padding`: an input of
    shape :py:`(*, H_1, ..., H_n, C)` gives an output of shape
    :py:`(*, H_1 + p_1, ..., H_n + p_n, C)`, with :math:`p_i` the total padding of
    axis :math:`i`.

    Arguments:
        padding: The padding of each spatial axis: a :py:`(low, high)` pair, or an int
            for both ends.
        mode: The padding mode: :py:`'constant'`, :py:`'edge'`, :py:`'reflect'` or
            :py:`'wrap'`.
        value: The padding value of the :py:`'constant'` mode, an array leaf.

    Example:
        >>> pad = nn.Pad([(1, 2)], value=-1.0)
        >>> pad(jnp.zeros((2, 1)))[:, 0]
        Array([-1.,  0.,  0., -1., -1.], dtype=float32)
        >>> nn.Pad([1, (0, 1)], mode='edge')(jnp.ones((4, 3, 3, 2))).shape
        (4, 5, 4, 2)
    """

    def __init__(
        self,
        padding: Sequence[int | Tuple[int, int]],
        mode: str = "constant",
        value: float | Array = 0.0,
    ):
        self.padding = padding
        self.mode = mode
        self.value = jnp.asarray(value)

    def __call__(self, x: Array) -> Array:
        r"""
        Arguments:
            x: The input, of shape :py:`(*, H_1, ..., H_n, C)`.

        Returns:
            The padded output.
        """

        n = len(self.padding)
        check_spatial(x, n)

        widths = [(0, 0)] * (x.ndim - n - 1) + list(pad_pairs(self.padding, n)) + [(0, 0)]
        if self.mode == "constant":
            return jnp.pad(x, widths, mode="constant", constant_values=self.value.astype(x.dtype))
        return jnp.pad(x, widths, mode=self.mode)

    ndim = ndim_of("padding")
