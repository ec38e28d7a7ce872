r"""Interpolation layers."""

from __future__ import annotations

__all__ = [
    "Resample",
]

import jax
import math

from jax import Array
from typing import Any, Sequence

from .module import Module
from .spatial import check_spatial, ndim_of


class Resample(Module):
    r"""Resamples the spatial axes of channels-last inputs (:func:`jax.image.resize`).

    The number of spatial axes :math:`n` is the length of :py:`factor`: an input of
    shape :py:`(*, H_1, ..., H_n, C)` gives an output of shape
    :py:`(*, H_1', ..., H_n', C)`, with :math:`H_i' = \lfloor r_i H_i \rfloor`.

    Arguments:
        factor: The resampling factor :math:`r_i` of each spatial axis.
        kwargs: Keyword arguments of :func:`jax.image.resize`, :py:`method` (such as
            :py:`'nearest'` or :py:`'linear'`) among them.

    Example:
        >>> up = nn.Resample((2, 2), method='nearest')
        >>> up(jnp.ones((4, 8, 8, 3))).shape
        (4, 16, 16, 3)
        >>> nn.Resample((0.5,), method='linear', antialias=False)(jnp.arange(4.0)[:, None])[:, 0]
        Array([0.5, 2.5], dtype=float32)
    """

    def __init__(self, factor: Sequence[float], **kwargs: Any):
        self.factor = factor
        self.kwargs = kwargs

    def __call__(self, x: Array) -> Array:
        r"""
        Arguments:
            x: The input, of shape :py:`(*, H_1, ..., H_n, C)`.

        Returns:
            The output, of shape :py:`(*, floor(r_1 H_1), ..., floor(r_n H_n), C)`.
        """

        n = len(self.factor)
        check_spatial(x, n)

        spatial = x.shape[x.ndim - n - 1 : -1]
        resized = [math.floor(r * h) for r, h in zip(self.factor, spatial)]
        # The axes that keep their length (batch, channels) are left as they are.
        shape = (*x.shape[: x.ndim - n - 1], *resized, x.shape[-1])
        return jax.image.resize(x, shape, **self.kwargs)

    ndim = ndim_of("factor")
