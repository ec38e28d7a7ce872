r"""Normalization layers.

All layers expect channels (features) on the last axis.
"""

from __future__ import annotations

__all__ = [
    "LayerNorm",
    "GroupNorm",
    "BatchNorm",
]

import jax
import jax.numpy as jnp
import numbers

from jax import Array
from typing import Dict, Sequence, Tuple

from .module import Module, Parameter
from .state import StateEntry, StateKey, update_state


def _standardize(x: Array, axes: Tuple[int, ...], eps: float) -> Array:
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(Module):
    r"""Normalizes each example over its last axes, then applies an optional
    element-wise affine transformation.

    .. math:: y = \frac{x - \mathbb{E}[x]}{\sqrt{\mathbb{V}[x] + \epsilon}} \gamma + \beta

    Arguments:
        features: The shape of the normalized trailing axes, or their size if an int.
        eps: A constant added to the variance, for stability.
        affine: Whether to learn a scale :math:`\gamma` (ones) and a shift
            :math:`\beta` (zeros).

    Example:
        >>> norm = nn.LayerNorm(4)
        >>> y = norm(jnp.arange(8.0).reshape(2, 4))
        >>> y.mean(axis=-1), y.shape
        (Array([0., 0.], dtype=float32), (2, 4))
    """

    def __init__(self, features: int | Sequence[int], eps: float = 1e-5, affine: bool = True):
        shape = (int(features),) if isinstance(features, numbers.Integral) else tuple(features)
        self.shape = shape
        self.eps = eps
        self.weight = Parameter(jnp.ones(shape)) if affine else None
        self.bias = Parameter(jnp.zeros(shape)) if affine else None

    def __call__(self, x: Array) -> Array:
        axes = tuple(range(-len(self.shape), 0))
        y = _standardize(x, axes, self.eps)
        if self.weight is not None:
            y = y * self.weight() + self.bias()
        return y


class GroupNorm(Module):
    r"""Splits the channels into groups and normalizes each group separately.

    The statistics of a group are computed over its channels and, if :py:`spatial`
    is positive, over the spatial axes that precede the channel axis, as for images
    of shape :py:`(*batch, H, W, C)` with :py:`spatial=2`. Inputs have shape
    :py:`(*batch, *spatial, C)`, with any number of batch axes.

    Arguments:
        groups: The number of groups, dividing :py:`channels`.
        channels: The number of channels :math:`C`.
        eps: A constant added to the variance, for stability.
        affine: Whether to learn a per-channel scale (ones) and shift (zeros).
        spatial: The number of spatial axes included in the statistics.

    Example:
        >>> norm = nn.GroupNorm(2, 4, spatial=2)
        >>> x = jax.random.normal(jax.random.key(0), (3, 5, 5, 4))
        >>> y = norm(x)
        >>> y.shape
        (3, 5, 5, 4)
        >>> bool(jnp.allclose(y[..., :2].mean(axis=(1, 2, 3)), 0.0, atol=1e-6))
        True
    """

    def __init__(
        self,
        groups: int,
        channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        spatial: int = 0,
    ):
        if channels % groups != 0:
            raise ValueError(f"{channels} channels cannot be split into {groups} groups")
        self.groups = groups
        self.eps = eps
        self.spatial = spatial
        self.weight = Parameter(jnp.ones(channels)) if affine else None
        self.bias = Parameter(jnp.zeros(channels)) if affine else None

    def __call__(self, x: Array) -> Array:
        grouped = x.reshape(*x.shape[:-1], self.groups, -1)
        # Axes of a group: the spatial axes (before the group axis) and its channels.
        axes = tuple(range(-self.spatial - 2, -2)) + (-1,)
        y = _standardize(grouped, axes, self.eps).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight() + self.bias()
        return y


class BatchNorm(Module):
    r"""Normalizes the channels with statistics over a batch.

    In training mode (:py:`training=True`, see :meth:`inox.nn.Module.train`), the
    mean and variance of each channel are computed over all axes but the last, and
    the running statistics are updated as

    .. math:: \mu \gets m \, \mu + (1 - m) \, \mathbb{E}[x], \quad
              \sigma^2 \gets m \, \sigma^2 + (1 - m) \, \mathbb{V}[x]

    where :math:`m` is the momentum and :math:`\mathbb{V}` the biased variance. In
    evaluation mode, the running statistics are used and left as they are.

    The running statistics are a state, initially :py:`(zeros, ones)` in the
    :class:`inox.nn.StateEntry` :py:`stats`: call :func:`inox.nn.export_state` on the
    model before using the layer.

    Arguments:
        channels: The number of channels.
        momentum: The weight of the old running statistics in their update.
        eps: A constant added to the variance, for stability.
        affine: Whether to learn a per-channel scale (ones) and shift (zeros).

    Example:
        >>> bn, state = nn.export_state(nn.BatchNorm(3))
        >>> x = 2.0 + jax.random.normal(jax.random.key(0), (64, 3))
        >>> y, state = bn(x, state)
        >>> mean, var = state[bn.stats]
        >>> bool(jnp.allclose(mean, 0.1 * x.mean(axis=0)))
        True
        >>> bn.train(False)
        >>> y, same = bn(x, state)
        >>> same is state
        True
    """

    def __init__(
        self,
        channels: int,
        momentum: float = 0.9,
        eps: float = 1e-5,
        affine: bool = True,
    ):
        self.momentum = momentum
        self.eps = eps
        self.training = True
        self.weight = Parameter(jnp.ones(channels)) if affine else None
        self.bias = Parameter(jnp.zeros(channels)) if affine else None
        self.stats = StateEntry((jnp.zeros(channels), jnp.ones(channels)))

    def __call__(self, x: Array, state: Dict[StateKey, Tuple[Array, Array]]) -> Tuple[Array, Dict]:
        r"""
        Arguments:
            x: The input, of shape :py:`(*, C)`.
            state: The state dictionary.

        Returns:
            The output, of shape :py:`(*, C)`, and the (updated) state dictionary.
        """

        if not isinstance(self.stats, StateKey):
            raise TypeError("the running statistics are still in the module: call inox.nn.export_state first")

        if self.training:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.var(x, axis=axes)
            # The running statistics are bookkeeping: no gradient flows into them.
            old_mean, old_var = state[self.stats]
            m = self.momentum
            new_mean = m * old_mean + (1 - m) * jax.lax.stop_gradient(mean)
            new_var = m * old_var + (1 - m) * jax.lax.stop_gradient(var)
            # A fixed dtype keeps the state a valid loop carry (jax.lax.scan).
            new_mean = new_mean.astype(old_mean.dtype)
            new_var = new_var.astype(old_var.dtype)
            state = update_state(state, {self.stats: (new_mean, new_var)})
        else:
            mean, var = state[self.stats]

        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight() + self.bias()
        return y, state
