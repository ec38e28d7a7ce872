r"""Activation functions as modules."""

from __future__ import annotations

__all__ = [
    "Activation",
    "Identity",
    "ReLU",
    "GELU",
    "SiLU",
    "Tanh",
    "Sigmoid",
    "Softplus",
    "Softmax",
    "LeakyReLU",
    "ELU",
]

import jax
import jax.numpy as jnp

from jax import Array

from .module import Module


class Activation(Module):
    r"""Base class for element-wise activation modules, applying :py:`function`.

    Example:
        >>> nn.ReLU()(jnp.asarray([-1.0, 2.0]))
        Array([0., 2.], dtype=float32)
        >>> nn.LeakyReLU(0.1)(jnp.asarray([-1.0, 2.0]))
        Array([-0.1,  2. ], dtype=float32)
        >>> nn.Softmax()(jnp.zeros(2))
        Array([0.5, 0.5], dtype=float32)
    """

    @staticmethod
    def function(x: Array) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array) -> Array:
        return self.function(x)


class Identity(Activation):
    r"""Returns its input unchanged."""

    @staticmethod
    def function(x: Array) -> Array:
        return x


class ReLU(Activation):
    r"""Rectified linear unit, :math:`\max(x, 0)`."""

    function = staticmethod(jax.nn.relu)


class GELU(Activation):
    r"""Gaussian error linear unit.

    Arguments:
        approximate: Whether to use the tanh approximation.
    """

    def __init__(self, approximate: bool = False):
        self.approximate = approximate

    def __call__(self, x: Array) -> Array:
        return jax.nn.gelu(x, approximate=self.approximate)


class SiLU(Activation):
    r"""Sigmoid linear unit, :math:`x \sigma(x)`."""

    function = staticmethod(jax.nn.silu)


class Tanh(Activation):
    r"""Hyperbolic tangent."""

    function = staticmethod(jnp.tanh)


class Sigmoid(Activation):
    r"""Logistic sigmoid."""

    function = staticmethod(jax.nn.sigmoid)


class Softplus(Activation):
    r"""Smooth approximation of ReLU, :math:`\log(1 + e^x)`."""

    function = staticmethod(jax.nn.softplus)


class Softmax(Activation):
    r"""Softmax over an axis.

    Arguments:
        axis: The axis to normalize.
    """

    def __init__(self, axis: int = -1):
        self.axis = axis

    def __call__(self, x: Array) -> Array:
        return jax.nn.softmax(x, axis=self.axis)


class LeakyReLU(Activation):
    r"""Leaky rectified linear unit.

    Arguments:
        alpha: The slope for negative inputs.
    """

    def __init__(self, alpha: float = 0.01):
        self.alpha = alpha

    def __call__(self, x: Array) -> Array:
        return jax.nn.leaky_relu(x, self.alpha)


class ELU(Activation):
    r"""Exponential linear unit.

    Arguments:
        alpha: The saturation value for negative inputs.
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def __call__(self, x: Array) -> Array:
        return jax.nn.elu(x, self.alpha)
