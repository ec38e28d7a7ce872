r"""Linear layers and embeddings.

The convolutions live in :mod:`inox.nn.conv`; they are importable from here too, where
the original inox defines them.

Example:
    >>> from inox.nn.linear import Conv
    >>> Conv is nn.Conv
    True
"""

from __future__ import annotations

__all__ = [
    "Linear",
    "Embedding",
]

import jax
import jax.numpy as jnp
import math

from jax import Array

from .conv import Conv, ConvTransposed  # noqa: F401 (the original's module for them)
from .module import Module, Parameter
from ..random import get_rng


class Linear(Module):
    r"""Applies an affine transformation :math:`y = x W + b`.

    The weight has shape :py:`(in_features, out_features)` and is initialized uniformly
    in :math:`\pm 1 / \sqrt{in}`; the bias is initialized to zero.

    Arguments:
        in_features: The number of input features.
        out_features: The number of output features.
        bias: Whether to add a bias.
        key: A PRNG key for initialization; drawn from
            :py:`inox.random.get_rng('init')` if :py:`None`.
        dtype: The parameters' data type.

    Example:
        >>> layer = nn.Linear(3, 5, key=jax.random.key(0))
        >>> layer
        Linear(
          bias = Parameter(float32[5]),
          weight = Parameter(float32[3, 5])
        )
        >>> layer(jnp.ones((2, 3))).shape
        (2, 5)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        key: Array | None = None,
        *,
        dtype: jnp.dtype = jnp.float32,
    ):
        if key is None:
            key = get_rng("init").split()

        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(
            jax.random.uniform(key, (in_features, out_features), dtype, -bound, bound)
        )
        self.bias = Parameter(jnp.zeros(out_features, dtype)) if bias else None

    def __call__(self, x: Array) -> Array:
        y = x @ self.weight()
        return y if self.bias is None else y + self.bias()


class Embedding(Module):
    r"""Maps integer indices to learned vectors.

    :meth:`attend` multiplies by the transposed embedding matrix, the output head of a
    language model whose head is tied to its embedding.

    Arguments:
        num_embeddings: The size of the vocabulary.
        features: The number of features per embedding.
        key: A PRNG key for initialization (standard normal).
        dtype: The parameters' data type.

    Example:
        >>> emb = nn.Embedding(10, 4, key=jax.random.key(0))
        >>> emb(jnp.asarray([1, 2])).shape
        (2, 4)
        >>> emb.attend(jnp.ones((2, 4))).shape
        (2, 10)
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        key: Array,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.weight = Parameter(jax.random.normal(key, (num_embeddings, features), dtype))

    def __call__(self, indices: Array) -> Array:
        return jnp.take(self.weight(), indices, axis=0)

    def attend(self, x: Array) -> Array:
        r"""Returns the logits :math:`x E^T` over the vocabulary."""

        return x @ self.weight().T
