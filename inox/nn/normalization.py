r"""Normalization layers.

As in the original inox, they learn no scale or shift (follow them with a layer that
does, if needed), and keep their constants :py:`epsilon` and :py:`momentum` as array
leaves.
"""

from __future__ import annotations

__all__ = [
    "BatchNorm",
    "LayerNorm",
    "GroupNorm",
    "Statistics",
]

import jax
import jax.numpy as jnp

from jax import Array
from typing import Dict, NamedTuple, Sequence, Tuple

from .module import Module
from .state import StateEntry, StateKey, update_state
from ..errors import UsageError


class Statistics(NamedTuple):
    r"""The running statistics of a :class:`BatchNorm`, per channel."""

    mean: Array  #: The running mean.
    var: Array  #: The running (biased) variance.


class BatchNorm(Module):
    r"""Normalizes the channels with statistics over a batch.

    .. math:: y = \frac{x - \mathbb{E}[x]}{\sqrt{\mathbb{V}[x] + \epsilon}}

    In training mode (:py:`training=True`, the default, see
    :meth:`inox.nn.Module.train`), the mean and variance of each channel are computed
    over all axes but the last, which must not be the only one, and the running
    statistics are updated as

    .. math:: \hat{s} \gets \alpha \hat{s} + (1 - \alpha) s

    where :math:`\alpha` is the momentum and :math:`s` the statistic of the batch. In
    evaluation mode, the running statistics are used and left as they are.

    The running statistics are a state, initially :py:`Statistics(zeros, ones)` in the
    :class:`inox.nn.StateEntry` :py:`stats`: call :func:`inox.nn.export_state` on the
    model before using the layer.

    Arguments:
        channels: The number of channels :math:`C`.
        epsilon: A constant added to the variance, for stability.
        momentum: The weight :math:`\alpha \in [0, 1]` of the old running statistics.

    Example:
        >>> bn, state = nn.export_state(nn.BatchNorm(3))
        >>> x = 2.0 + jax.random.normal(jax.random.key(0), (64, 3))
        >>> y, state = bn(x, state)
        >>> bool(jnp.allclose(state[bn.stats].mean, 0.1 * x.mean(axis=0)))
        True
        >>> bn(x[0], state)
        Traceback (most recent call last):
          ...
        inox.errors.UsageError: the input tensor is not batched.
        >>> bn.train(False)
        >>> y, same = bn(x[0], state)
        >>> same is state
        True
    """

    training: bool = True

    def __init__(
        self,
        channels: int,
        epsilon: float | Array = 1e-5,
        momentum: float | Array = 0.9,
    ):
        self.epsilon = jnp.asarray(epsilon)
        self.momentum = jnp.asarray(momentum)
        self.stats = StateEntry(Statistics(mean=jnp.zeros(channels), var=jnp.ones(channels)))

    def __call__(self, x: Array, state: Dict[StateKey, Statistics]) -> Tuple[Array, Dict]:
        r"""
        Arguments:
            x: The input, of shape :py:`(N, *, C)` (in training mode) or :py:`(*, C)`.
            state: The state dictionary.

        Returns:
            The output, of the same shape, and the (updated) state dictionary.
        """

        if not isinstance(self.stats, StateKey):
            raise TypeError("the running statistics are still in the module: call inox.nn.export_state first")

        if self.training:
            if x.ndim < 2:
                raise UsageError("the input tensor is not batched.")
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.var(x, axis=axes)
            # The running statistics are bookkeeping: no gradient flows into them.
            old = state[self.stats]
            new = Statistics(
                mean=self.ema(old.mean, jax.lax.stop_gradient(mean)),
                var=self.ema(old.var, jax.lax.stop_gradient(var)),
            )
            state = update_state(state, {self.stats: new})
        else:
            mean, var = state[self.stats]

        return (x - mean) * jax.lax.rsqrt(var + self.epsilon), state

    def ema(self, old: Array, new: Array) -> Array:
        r"""Returns the exponential moving average :math:`\alpha \hat{s} + (1 - \alpha) s`
        of a running statistic :py:`old` and a batch statistic :py:`new`.

        Example:
            >>> nn.BatchNorm(2, momentum=0.75).ema(jnp.zeros(2), jnp.ones(2))
            Array([0.25, 0.25], dtype=float32)
        """

        # A fixed dtype keeps the state a valid loop carry (jax.lax.scan).
        return (self.momentum * old + (1 - self.momentum) * new).astype(old.dtype)


class LayerNorm(Module):
    r"""Normalizes each example over an axis or axes.

    .. math:: y = \frac{x - \mathbb{E}[x]}{\sqrt{\mathbb{V}[x] + \epsilon}}

    Arguments:
        axis: The axis or axes of the statistics.
        epsilon: A constant added to the variance, for stability.

    Example:
        >>> norm = nn.LayerNorm()
        >>> y = norm(jnp.arange(8.0).reshape(2, 4))
        >>> y.mean(axis=-1), y.shape
        (Array([0., 0.], dtype=float32), (2, 4))
        >>> norm
        LayerNorm(
          axis = -1,
          epsilon = float32[]
        )
    """

    def __init__(self, axis: int | Sequence[int] = -1, epsilon: float | Array = 1e-5):
        self.axis = axis
        self.epsilon = jnp.asarray(epsilon)

    def __call__(self, x: Array) -> Array:
        r"""
        Arguments:
            x: The input, of shape :py:`(*, C)`.

        Returns:
            The output, of the same shape.
        """

        axis = self.axis if isinstance(self.axis, int) else tuple(self.axis)
        mean = jnp.mean(x, axis=axis, keepdims=True)
        var = jnp.var(x, axis=axis, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon)


class GroupNorm(LayerNorm):
    r"""Splits the channels (last axis) into groups and normalizes each group of each
    example separately. With one group, it is a :class:`LayerNorm`.

    Arguments:
        groups: The number of groups :math:`G`, dividing the number of channels.
        epsilon: A constant added to the variance, for stability.

    Example:
        >>> norm = nn.GroupNorm(2)
        >>> y = norm(jax.random.normal(jax.random.key(0), (3, 4)))
        >>> bool(jnp.allclose(y[:, :2].mean(axis=-1), 0.0, atol=1e-6))
        True
    """

    def __init__(self, groups: int, epsilon: float | Array = 1e-5):
        super().__init__(axis=-1, epsilon=epsilon)
        self.groups = groups

    def __call__(self, x: Array) -> Array:
        r"""
        Arguments:
            x: The input, of shape :py:`(*, C)`, with :math:`C` a multiple of
                :py:`groups`.

        Returns:
            The output, of the same shape.
        """

        if x.shape[-1] % self.groups != 0:
            raise ValueError(f"{x.shape[-1]} channels cannot be split into {self.groups} groups")
        grouped = x.reshape(*x.shape[:-1], self.groups, -1)
        return super().__call__(grouped).reshape(x.shape)
