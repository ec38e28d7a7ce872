r"""Dropout layers."""

from __future__ import annotations

__all__ = [
    "Dropout",
    "TrainingDropout",
]

import jax
import jax.numpy as jnp

from jax import Array

from .module import Module


class Dropout(Module):
    r"""Zeroes each element with probability :math:`p` and scales the others by
    :math:`1 / (1 - p)`, so that the expected output is the input.

    The randomness is explicit: the layer always drops, with the key it is given.

    Arguments:
        p: The probability of dropping an element, in :math:`[0, 1]`.

    Example:
        >>> drop = nn.Dropout(0.5)
        >>> y = drop(jnp.ones(8), jax.random.key(0))
        >>> bool(jnp.all((y == 0) | (y == 2)))
        True
    """

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"the dropout probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: Array, key: Array) -> Array:
        r"""
        Arguments:
            x: The input, of any shape.
            key: A PRNG key.
        """

        if self.p == 0:
            return x
        if self.p == 1:
            return jnp.zeros_like(x)

        keep = jax.random.bernoulli(key, 1 - self.p, x.shape)
        return jnp.where(keep, x / (1 - self.p), 0)


class TrainingDropout(Dropout):
    r"""Dropout that only drops in training mode (:py:`training=True`, see
    :meth:`inox.nn.Module.train`), and returns its input as it is otherwise.

    Arguments:
        p: The probability of dropping an element, in :math:`[0, 1]`.

    Example:
        >>> drop = nn.TrainingDropout(0.5)
        >>> drop(jnp.ones(4), jax.random.key(0)).shape
        (4,)
        >>> drop.train(False)
        >>> drop(jnp.ones(4))  # no key needed
        Array([1., 1., 1., 1.], dtype=float32)
    """

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.training = True

    def __call__(self, x: Array, key: Array | None = None) -> Array:
        r"""
        Arguments:
            x: The input, of any shape.
            key: A PRNG key, required in training mode.
        """

        if not self.training:
            return x
        if key is None:
            raise ValueError("TrainingDropout needs a PRNG key in training mode")
        return super().__call__(x, key)
