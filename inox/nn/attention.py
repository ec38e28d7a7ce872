r"""Attention layers."""

from __future__ import annotations

__all__ = [
    "MultiheadAttention",
]

import jax
import jax.numpy as jnp
import math

from jax import Array

from .linear import Linear
from .module import Module


class MultiheadAttention(Module):
    r"""Multi-head scaled dot-product attention.

    The queries, keys and values are projected by :class:`inox.nn.Linear` layers and
    split into :py:`heads` heads of :py:`features // heads` features; each head computes

    .. math:: \mathrm{softmax} \left( \frac{Q K^T}{\sqrt{d}} \right) V

    and the concatenated heads go through an output projection.

    Arguments:
        heads: The number of heads, dividing :py:`features`.
        features: The number of features of the inputs and output.
        key: A PRNG key for initialization.
        bias: Whether the projections have biases.
        causal: Whether query :math:`i` may only attend to keys :math:`j \leq i`.
        dtype: The parameters' data type.

    Example:
        >>> attn = nn.MultiheadAttention(4, 16, key=jax.random.key(0), causal=True)
        >>> x = jnp.ones((2, 10, 16))
        >>> attn(x).shape  # self-attention
        (2, 10, 16)
        >>> attn(x, jnp.ones((2, 10, 16))).shape  # cross-attention
        (2, 10, 16)
    """

    def __init__(
        self,
        heads: int,
        features: int,
        *,
        key: Array,
        bias: bool = True,
        causal: bool = False,
        dtype: jnp.dtype = jnp.float32,
    ):
        if features % heads != 0:
            raise ValueError(f"{features} features cannot be split into {heads} heads")

        keys = jax.random.split(key, 4)

        self.heads = heads
        self.causal = causal
        self.q_proj = Linear(features, features, bias, key=keys[0], dtype=dtype)
        self.k_proj = Linear(features, features, bias, key=keys[1], dtype=dtype)
        self.v_proj = Linear(features, features, bias, key=keys[2], dtype=dtype)
        self.out_proj = Linear(features, features, bias, key=keys[3], dtype=dtype)

    def __call__(
        self,
        xq: Array,
        xk: Array | None = None,
        xv: Array | None = None,
        mask: Array | None = None,
    ) -> Array:
        r"""
        Arguments:
            xq: The query inputs, of shape :py:`(*, L_q, features)`.
            xk: The key inputs, of shape :py:`(*, L_k, features)`; :py:`xq` if
                :py:`None` (self-attention).
            xv: The value inputs, of shape :py:`(*, L_k, features)`; :py:`xk` if
                :py:`None`.
            mask: A boolean array broadcastable to :py:`(*, L_q, L_k)`, :py:`True`
                where a query may attend to a key. It is combined with the causal
                mask, if any. A query that may attend to no key gets uniform weights.

        Returns:
            The outputs, of shape :py:`(*, L_q, features)`.
        """

        xk = xq if xk is None else xk
        xv = xk if xv is None else xv

        def split(x: Array) -> Array:  # (*, L, H * D) -> (*, L, H, D)
            return x.reshape(*x.shape[:-1], self.heads, -1)

        q = split(self.q_proj(xq))
        k = split(self.k_proj(xk))
        v = split(self.v_proj(xv))

        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])

        if self.causal:
            causal = jnp.tril(jnp.ones((q.shape[-3], k.shape[-3]), dtype=bool))
            mask = causal if mask is None else jnp.logical_and(mask, causal)

        if mask is not None:
            mask = jnp.expand_dims(mask, -3)  # same for every head
            # The lowest finite value, rather than -inf, keeps fully masked rows NaN-free.
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)

        weights = jax.nn.softmax(logits, axis=-1)
        y = jnp.einsum("...hqk,...khd->...qhd", weights, v)
        y = y.reshape(*y.shape[:-2], -1)

        return self.out_proj(y)
