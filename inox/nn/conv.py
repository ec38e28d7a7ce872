r"""Convolution layers."""

from __future__ import annotations

__all__ = [
    "Conv",
    "ConvTransposed",
]

import jax
import jax.numpy as jnp
import math
import numbers

from jax import Array
from typing import Sequence, Tuple

from .module import Module, Parameter
from .spatial import ndim_of, pad_pairs, per_axis
from ..random import get_rng

Padding = int | str | Sequence[int | Tuple[int, int]]


class Conv(Module):
    r"""Applies an N-d convolution to channels-last inputs.

    The number of spatial axes :math:`N` is the length of :py:`kernel_size`; an int
    kernel size means a 1-d convolution. Inputs have shape :py:`(*batch, *spatial, C)`
    with any number of batch axes, none included.

    The kernel has shape :py:`(*kernel_size, in_channels // groups, out_channels)`, the
    channels-last counterpart of the :py:`(in, out)` weight of :class:`inox.nn.Linear`,
    and is initialized uniformly in :math:`\pm 1 / \sqrt{fan_{in}}`, where
    :math:`fan_{in}` is the number of inputs of an output channel; the bias is
    initialized to zero. Along spatial axis :math:`i`, the output has

    .. math:: H_i' = \left\lfloor \frac{H_i + p_i - d_i (k_i - 1) - 1}{s_i} \right\rfloor + 1

    elements, with :math:`k_i`, :math:`s_i`, :math:`d_i` and :math:`p_i` the kernel
    size, stride, dilation and total padding.

    Arguments:
        in_channels: The number of input channels.
        out_channels: The number of output channels.
        kernel_size: The size of the kernel, per spatial axis.
        bias: Whether to add a bias.
        stride: The stride, per spatial axis or for all.
        dilation: The kernel dilation, per spatial axis or for all.
        padding: The zero padding: an int for all sides, a sequence with an int or a
            :py:`(low, high)` pair per spatial axis, or :py:`'SAME'` or :py:`'VALID'`.
        groups: The number of channel groups, dividing both channel numbers: each
            group of output channels sees its group of input channels only.
        key: A PRNG key for initialization; drawn from
            :py:`inox.random.get_rng('init')` if :py:`None`.
        dtype: The parameters' data type.

    Example:
        >>> conv = nn.Conv(3, 8, (3, 3), padding='SAME', key=jax.random.key(0))
        >>> conv
        Conv(
          bias = Parameter(float32[8]),
          dilation = (1, 1),
          groups = 1,
          kernel = Parameter(float32[3, 3, 3, 8]),
          kernel_size = (3, 3),
          padding = 'SAME',
          stride = (1, 1)
        )
        >>> conv(jnp.ones((2, 16, 16, 3))).shape
        (2, 16, 16, 8)
        >>> conv(jnp.ones((16, 16, 3))).shape  # unbatched
        (16, 16, 8)
        >>> nn.Conv(4, 4, 5, stride=2, groups=4, key=jax.random.key(0))(jnp.ones((7, 32, 4))).shape
        (7, 14, 4)
    """

    #: Whether the padding may be named, 'SAME' or 'VALID' (a class constant, not a
    #: leaf: class attributes are not in the tree).
    named_padding: bool = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        bias: bool = True,
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        padding: Padding = 0,
        groups: int = 1,
        key: Array | None = None,
        *,
        dtype: jnp.dtype = jnp.float32,
    ):
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(f"{groups} groups must divide {in_channels} and {out_channels} channels")
        if key is None:
            key = get_rng("init").split()

        if isinstance(kernel_size, numbers.Integral):
            kernel_size = (kernel_size,)  # 1-d
        kernel_size = tuple(map(int, kernel_size))
        n = len(kernel_size)

        if isinstance(padding, str) and not self.named_padding:
            raise ValueError(f"the padding of a {type(self).__name__} is given in numbers, got {padding!r}")

        self.kernel_size = kernel_size
        self.stride = per_axis(stride, n, "stride")
        self.dilation = per_axis(dilation, n, "dilation")
        self.padding = padding.upper() if isinstance(padding, str) else pad_pairs(padding, n)
        self.groups = groups

        fan_in = in_channels // groups * math.prod(kernel_size)
        bound = 1 / math.sqrt(fan_in)
        shape = (*kernel_size, in_channels // groups, out_channels)
        # Same values as drawing the shape directly, but high-rank draws compile slowly.
        kernel = jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound)
        self.kernel = Parameter(kernel.reshape(shape))
        self.bias = Parameter(jnp.zeros(out_channels, dtype)) if bias else None

    def __call__(self, x: Array) -> Array:
        r"""
        Arguments:
            x: The input, of shape :py:`(*batch, *spatial, C_in)`.

        Returns:
            The output, of shape :py:`(*batch, *spatial', C_out)`.
        """

        return self._convolve(x, self.stride, self.padding, None)

    def _convolve(
        self,
        x: Array,
        strides: Sequence[int],
        padding: str | Sequence[Tuple[int, int]],
        lhs_dilation: Sequence[int] | None,
    ) -> Array:
        n = len(self.kernel_size)
        batch = x.shape[: x.ndim - n - 1]
        # XLA wants exactly one batch axis: fold them all, or make one.
        x = x.reshape(-1, *x.shape[x.ndim - n - 1 :])

        y = jax.lax.conv_general_dilated(
            x,
            self.kernel(),
            window_strides=strides,
            padding=padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=self.dilation,
            dimension_numbers=self.dimensions,
            feature_group_count=self.groups,
        )

        if self.bias is not None:
            y = y + self.bias()
        return y.reshape(*batch, *y.shape[1:])

    ndim = ndim_of("kernel_size")

    @property
    def dimensions(self) -> jax.lax.ConvDimensionNumbers:
        r"""The layout of the convolution for XLA: input and output
        :py:`(N, *spatial, C)`, kernel :py:`(*kernel_size, C_in / groups, C_out)`.

        Example:
            >>> nn.Conv(3, 8, (5, 5), key=jax.random.key(0)).dimensions.rhs_spec
            (3, 2, 0, 1)
        """

        n = len(self.kernel_size)
        spatial = tuple(range(1, n + 1))
        return jax.lax.ConvDimensionNumbers(
            lhs_spec=(0, n + 1, *spatial),
            rhs_spec=(n + 1, n, *range(n)),
            out_spec=(0, n + 1, *spatial),
        )


class ConvTransposed(Conv):
    r"""Applies an N-d transposed convolution to channels-last inputs.

    The input is dilated by the stride (:math:`s_i - 1` zeros between its elements),
    padded by :math:`d_i (k_i - 1)` minus the padding on each side, and convolved with
    the kernel with stride 1: the shape arithmetic of the gradient of a
    :class:`Conv` with respect to its input, sometimes called a deconvolution. Along
    spatial axis :math:`i`, the output has

    .. math:: H_i' = (H_i - 1) s_i + d_i (k_i - 1) - p_i + 1

    elements. The arguments and parameters are those of :class:`Conv`, except that
    the padding is given in numbers only (no :py:`'SAME'` or :py:`'VALID'`).

    Example:
        >>> up = nn.ConvTransposed(8, 3, (4, 4), stride=2, padding=1, key=jax.random.key(0))
        >>> up(jnp.ones((2, 16, 16, 8))).shape
        (2, 32, 32, 3)
    """

    # The padding of the dilated input is computed from the numbers.
    named_padding = False

    def __call__(self, x: Array) -> Array:
        r"""Takes and returns the shapes of :meth:`Conv.__call__`, with the spatial
        lengths :math:`H_i'` above."""

        ones = (1,) * len(self.kernel_size)
        return self._convolve(x, ones, self.transposed_padding, self.stride)

    @property
    def transposed_padding(self) -> Sequence[Tuple[int, int]]:
        r"""The padding of the dilated input, :math:`d_i (k_i - 1) - p_i` on each side.

        Example:
            >>> nn.ConvTransposed(8, 3, (4, 4), padding=1, key=jax.random.key(0)).transposed_padding
            [(2, 2), (2, 2)]
        """

        return [
            (d * (k - 1) - lo, d * (k - 1) - hi)
            for k, d, (lo, hi) in zip(self.kernel_size, self.dilation, self.padding)
        ]
