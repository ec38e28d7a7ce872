r"""Dropout layers.

The dropout rate :py:`p` is an array leaf, as in the original inox: it can be changed
or traced without a new compilation, and it is partitioned with the other arrays.
"""

from __future__ import annotations

__all__ = [
    "Dropout",
    "TrainingDropout",
]

import jax
import jax.numpy as jnp

from jax import Array

from .module import Module
from ..random import get_rng


def _check_rate(p: Array) -> None:
    try:
        concrete = float(p)
    except jax.errors.ConcretizationTypeError:
        return  # a traced rate: nothing to check before it is known
    if not 0 <= concrete <= 1:
        raise ValueError(f"the dropout probability must be in [0, 1], got {concrete}")


class Dropout(Module):
    r"""Zeroes each element with probability :math:`p` and scales the others by
    :math:`1 / (1 - p)`, so that the expected output is the input.

    The randomness is explicit: the layer always drops, with the key it is given.

    Arguments:
        p: The probability of dropping an element, in :math:`[0, 1]`.

    Example:
        >>> drop = nn.Dropout(0.5)
        >>> drop
        Dropout(
          p = float32[]
        )
        >>> y = drop(jnp.ones(8), jax.random.key(0))
        >>> bool(jnp.all((y == 0) | (y == 2)))
        True
    """

    def __init__(self, p: float | Array = 0.5):
        self.p = jnp.asarray(p)
        _check_rate(self.p)

    def __call__(self, x: Array, key: Array) -> Array:
        r"""
        Arguments:
            x: The input, of any shape.
            key: A PRNG key.

        Returns:
            The output, of the same shape.
        """

        keep = jax.random.bernoulli(key, 1 - self.p, x.shape)
        # With p = 1, 1 / (1 - p) is infinite: scaling by it would make the gradient
        # of the dropped elements NaN (0 * inf), though none is kept.
        scale = jnp.where(self.p < 1, 1 / jnp.where(self.p < 1, 1 - self.p, 1), 0)
        return jnp.where(keep, x * scale.astype(x.dtype), 0)


class TrainingDropout(Dropout):
    r"""Dropout that only drops in training mode (:py:`training=True`, the default, see
    :meth:`inox.nn.Module.train`), and returns its input as it is otherwise.

    Without a key, in training mode, the key is drawn from the generator named
    :py:`'dropout'` (see :func:`inox.random.set_rng`).

    Arguments:
        p: The probability of dropping an element, in :math:`[0, 1]`.

    Example:
        >>> drop = nn.TrainingDropout(0.5)
        >>> drop(jnp.ones(4), jax.random.key(0)).shape
        (4,)
        >>> with inox.random.set_rng(dropout=inox.random.PRNG(0)):
        ...     drop(jnp.ones(4)).shape
        (4,)
        >>> drop.train(False)
        >>> drop(jnp.ones(4))  # no key needed
        Array([1., 1., 1., 1.], dtype=float32)
    """

    training: bool = True

    def __call__(self, x: Array, key: Array | None = None) -> Array:
        r"""
        Arguments:
            x: The input, of any shape.
            key: A PRNG key; drawn from :py:`inox.random.get_rng('dropout')` if
                :py:`None` in training mode.

        Returns:
            The output, of the same shape.
        """

        if not self.training:
            return x
        if key is None:
            key = get_rng("dropout").split()
        return super().__call__(x, key)
