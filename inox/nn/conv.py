r"""Convolution layers."""

from __future__ import annotations

__all__ = [
    "Conv",
]

import jax
import jax.numpy as jnp
import math
import numbers

from jax import Array
from typing import Sequence, Tuple

from .module import Module, Parameter

Padding = int | str | Sequence[int | Tuple[int, int]]


def _tuple(x: int | Sequence[int], n: int, name: str) -> Tuple[int, ...]:
    if isinstance(x, numbers.Integral):
        return (int(x),) * n
    x = tuple(x)
    if len(x) != n:
        raise ValueError(f"expected {n} value(s) for {name}, got {x}")
    return x


def _padding(padding: Padding, n: int) -> str | Tuple[Tuple[int, int], ...]:
    if isinstance(padding, str):
        return padding.upper()
    pairs = []
    for p in _tuple(padding, n, "padding"):
        lo, hi = (p, p) if isinstance(p, numbers.Integral) else p
        pairs.append((int(lo), int(hi)))
    return tuple(pairs)


class Conv(Module):
    r"""Applies an N-d convolution to channels-last inputs.

    The number of spatial axes :math:`N` is the length of :py:`kernel_size`; an int
    kernel size means a 1-d convolution. Inputs have shape :py:`(*batch, *spatial, C)`
    with any number of batch axes, none included.

    The weight has shape :py:`(*kernel_size, in_channels // groups, out_channels)`, the
    channels-last counterpart of the :py:`(in, out)` weight of :class:`inox.nn.Linear`,
    and is initialized uniformly in :math:`\pm 1 / \sqrt{fan_{in}}`, where
    :math:`fan_{in}` is the number of inputs of an output channel; the bias is
    initialized to zero.

    Arguments:
        in_channels: The number of input channels.
        out_channels: The number of output channels.
        kernel_size: The size of the kernel, per spatial axis.
        stride: The stride, per spatial axis or for all.
        padding: The zero padding: an int for all sides, a sequence with an int or a
            :py:`(low, high)` pair per spatial axis, or :py:`'SAME'` or :py:`'VALID'`.
        dilation: The kernel dilation, per spatial axis or for all.
        groups: The number of channel groups, dividing both channel numbers: each
            group of output channels sees its group of input channels only.
        bias: Whether to add a bias.
        key: A PRNG key for initialization.
        dtype: The parameters' data type.

    Example:
        >>> conv = nn.Conv(3, 8, (3, 3), padding='SAME', key=jax.random.key(0))
        >>> conv
        Conv(
          bias=Parameter(float32[8]),
          dilation=(1, 1),
          groups=1,
          padding='SAME',
          stride=(1, 1),
          weight=Parameter(float32[3, 3, 3, 8])
        )
        >>> conv(jnp.ones((2, 16, 16, 3))).shape
        (2, 16, 16, 8)
        >>> conv(jnp.ones((16, 16, 3))).shape  # unbatched
        (16, 16, 8)
        >>> nn.Conv(4, 4, 5, stride=2, groups=4, key=jax.random.key(0))(jnp.ones((7, 32, 4))).shape
        (7, 14, 4)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        key: Array,
        dtype: jnp.dtype = jnp.float32,
    ):
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(f"{groups} groups must divide {in_channels} and {out_channels} channels")

        if isinstance(kernel_size, numbers.Integral):
            kernel_size = (kernel_size,)  # 1-d
        kernel_size = tuple(map(int, kernel_size))
        n = len(kernel_size)

        self.stride = _tuple(stride, n, "stride")
        self.padding = _padding(padding, n)
        self.dilation = _tuple(dilation, n, "dilation")
        self.groups = groups

        fan_in = in_channels // groups * math.prod(kernel_size)
        bound = 1 / math.sqrt(fan_in)
        shape = (*kernel_size, in_channels // groups, out_channels)
        # Same values as drawing the shape directly, but high-rank draws compile slowly.
        weight = jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound)
        self.weight = Parameter(weight.reshape(shape))
        self.bias = Parameter(jnp.zeros(out_channels, dtype)) if bias else None

    def __call__(self, x: Array) -> Array:
        r"""
        Arguments:
            x: The input, of shape :py:`(*batch, *spatial, C_in)`.

        Returns:
            The output, of shape :py:`(*batch, *spatial', C_out)`.
        """

        n = self.weight.value.ndim - 2
        batch = x.shape[: x.ndim - n - 1]
        # XLA wants exactly one batch axis: fold them all, or make one.
        x = x.reshape(-1, *x.shape[x.ndim - n - 1 :])

        spatial = tuple(range(1, n + 1))
        dimensions = jax.lax.ConvDimensionNumbers(
            lhs_spec=(0, n + 1, *spatial),
            rhs_spec=(n + 1, n, *range(n)),
            out_spec=(0, n + 1, *spatial),
        )
        y = jax.lax.conv_general_dilated(
            x,
            self.weight(),
            window_strides=self.stride,
            padding=self.padding,
            rhs_dilation=self.dilation,
            dimension_numbers=dimensions,
            feature_group_count=self.groups,
        )

        if self.bias is not None:
            y = y + self.bias()
        return y.reshape(*batch, *y.shape[1:])
