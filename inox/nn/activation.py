r"""Activation functions as modules.

Parametrized activations keep their coefficient as an array leaf (:py:`alpha`), as in
the original inox, and are represented on one line.
"""

from __future__ import annotations

__all__ = [
    "Activation",
    "Identity",
    "Tanh",
    "Sigmoid",
    "SiLU",
    "Softplus",
    "Softmax",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "CELU",
    "GELU",
    "SELU",
]

import jax
import jax.numpy as jnp
import numpy as np

from jax import Array
from typing import Any, Sequence, Tuple

from .module import Module


class Activation(Module):
    r"""Base class for element-wise activation modules, applying :py:`function`.

    The attributes named in :py:`shown` are the ones of its one-line representation.

    Example:
        >>> nn.ReLU()(jnp.asarray([-1.0, 2.0]))
        Array([0., 2.], dtype=float32)
        >>> nn.LeakyReLU(0.1)
        LeakyReLU(alpha=0.1)
        >>> nn.Softmax()(jnp.zeros(2))
        Array([0.5, 0.5], dtype=float32)
    """

    shown: Tuple[str, ...] = ()

    def __init__(self):
        pass

    @staticmethod
    def function(x: Array) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array) -> Array:
        return self.function(x)

    def __prepr__(self, printer, indent: int) -> str:
        attrs = ", ".join(f"{name}={_show(getattr(self, name))}" for name in self.shown)
        return f"{type(self).__name__}({attrs})"


def _show(value: Any) -> str:
    # A concrete coefficient reads as its value, 0.1, rather than Array(0.1, ...); NumPy
    # prints the shortest decimal that round-trips in the array's own precision.
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        return str(np.asarray(value))
    return str(value)


class Identity(Activation):
    r"""Returns its input unchanged, :math:`y = x`.

    Example:
        >>> nn.Identity()(jnp.asarray([-1.0]))
        Array([-1.], dtype=float32)
    """

    @staticmethod
    def function(x: Array) -> Array:
        return x


class Tanh(Activation):
    r"""Hyperbolic tangent, :math:`y = \tanh(x)`.

    Example:
        >>> nn.Tanh()(jnp.asarray([0.0]))
        Array([0.], dtype=float32)
    """

    function = staticmethod(jnp.tanh)


class Sigmoid(Activation):
    r"""Logistic sigmoid, :math:`y = 1 / (1 + e^{-x})`.

    Example:
        >>> nn.Sigmoid()(jnp.asarray([0.0]))
        Array([0.5], dtype=float32)
    """

    function = staticmethod(jax.nn.sigmoid)


class SiLU(Activation):
    r"""Sigmoid linear unit, :math:`y = x \sigma(x)`.

    Example:
        >>> nn.SiLU()(jnp.asarray([0.0]))
        Array([0.], dtype=float32)
    """

    function = staticmethod(jax.nn.silu)


class Softplus(Activation):
    r"""Smooth approximation of ReLU, :math:`y = \log(1 + e^x)`.

    Example:
        >>> nn.Softplus()(jnp.asarray([0.0]))
        Array([0.6931472], dtype=float32)
    """

    function = staticmethod(jax.nn.softplus)


class Softmax(Activation):
    r"""Softmax over an axis or axes, :math:`y_i = e^{x_i} / \sum_j e^{x_j}`.

    Arguments:
        axis: The axis or axes of the sum.

    Example:
        >>> nn.Softmax(axis=0)
        Softmax(axis=0)
    """

    shown = ("axis",)

    def __init__(self, axis: int | Sequence[int] = -1):
        self.axis = axis

    def __call__(self, x: Array) -> Array:
        return jax.nn.softmax(x, axis=self.axis)


class ReLU(Activation):
    r"""Rectified linear unit, :math:`y = \max(x, 0)`.

    Example:
        >>> nn.ReLU()
        ReLU()
    """

    function = staticmethod(jax.nn.relu)


class LeakyReLU(Activation):
    r"""Leaky rectified linear unit, :math:`y = x` for positive inputs and
    :math:`\alpha x` otherwise.

    Arguments:
        alpha: The slope :math:`\alpha` for negative inputs.

    Example:
        >>> nn.LeakyReLU(0.1)(jnp.asarray([-1.0, 2.0]))
        Array([-0.1,  2. ], dtype=float32)
    """

    shown = ("alpha",)

    def __init__(self, alpha: float | Array = 0.01):
        self.alpha = jnp.asarray(alpha)

    def __call__(self, x: Array) -> Array:
        return jax.nn.leaky_relu(x, self.alpha)


class ELU(Activation):
    r"""Exponential linear unit, :math:`y = x` for positive inputs and
    :math:`\alpha (e^x - 1)` otherwise.

    Arguments:
        alpha: The coefficient :math:`\alpha`, the value to which negative inputs saturate
            (negated).

    Example:
        >>> nn.ELU(2.0)(jnp.asarray([-100.0, 1.0]))
        Array([-2.,  1.], dtype=float32)
    """

    shown = ("alpha",)

    def __init__(self, alpha: float | Array = 1.0):
        self.alpha = jnp.asarray(alpha)

    def __call__(self, x: Array) -> Array:
        return jax.nn.elu(x, self.alpha)


class CELU(ELU):
    r"""Continuously differentiable ELU,
    :math:`y = \max(x, 0) + \alpha \min(0, e^{x / \alpha} - 1)`.

    Arguments:
        alpha: The coefficient :math:`\alpha`.

    Example:
        >>> nn.CELU(2.0)(jnp.asarray([-100.0, 1.0]))
        Array([-2.,  1.], dtype=float32)
        >>> nn.CELU()
        CELU(alpha=1.0)
    """

    def __call__(self, x: Array) -> Array:
        return jax.nn.celu(x, self.alpha)


class GELU(Activation):
    r"""Gaussian error linear unit, :math:`y = x \Phi(x)`, with :math:`\Phi` the
    standard normal distribution function, or its tanh approximation.

    Arguments:
        approximate: Whether to use the tanh approximation.

    Example:
        >>> nn.GELU()
        GELU(approximate=True)
        >>> nn.GELU(approximate=False)(jnp.asarray([0.0, 10.0]))
        Array([ 0., 10.], dtype=float32)
    """

    shown = ("approximate",)

    def __init__(self, approximate: bool = True):
        self.approximate = approximate

    def __call__(self, x: Array) -> Array:
        return jax.nn.gelu(x, approximate=self.approximate)


class SELU(Activation):
    r"""Self-normalizing ELU, :math:`y = \lambda x` for positive inputs and
    :math:`\lambda \alpha (e^x - 1)` otherwise, with :math:`\lambda \approx 1.0507`
    and :math:`\alpha \approx 1.6733`.

    Example:
        >>> nn.SELU()(jnp.asarray([1.0]))
        Array([1.050701], dtype=float32)
    """

    function = staticmethod(jax.nn.selu)
