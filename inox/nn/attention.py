r"""Attention layers."""

from __future__ import annotations

# attention, the function of one head, is public but not exported to inox.nn, as in 0.7.
__all__ = [
    "MultiheadAttention",
]

import jax
import jax.numpy as jnp
import math

from jax import Array

from .linear import Linear
from .module import Module
from ..random import get_rng


def attention(q: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
    r"""Scaled dot-product attention, :math:`\mathrm{softmax}(Q K^T / \sqrt{C}) V`: the
    function of one head (inox 0.7 has it, under this name, beside its layer).

    Arguments:
        q: The queries, of shape :py:`(*, S, C)`.
        k: The keys, of shape :py:`(*, T, C)`.
        v: The values, of shape :py:`(*, T, C')`.
        mask: A boolean array broadcastable to :py:`(*, S, T)`, :py:`True` where a
            query may attend to a key. A query that may attend to no key gets uniform
            weights.

    Returns:
        The outputs, of shape :py:`(*, S, C')`.

    Example:
        >>> from inox.nn.attention import attention
        >>> q, k, v = jnp.ones((5, 4)), jnp.ones((3, 4)), jnp.arange(6.0).reshape(3, 2)
        >>> attention(q, k, v)[0]
        Array([2., 3.], dtype=float32)
        >>> attention(q, k, v, mask=jnp.array([True, False, False]))[0]
        Array([0., 1.], dtype=float32)
    """

    logits = jnp.einsum("...sc,...tc->...st", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        # The lowest finite value, rather than -inf, keeps fully masked rows NaN-free.
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jnp.einsum("...st,...tc->...sc", jax.nn.softmax(logits, axis=-1), v)


class MultiheadAttention(Module):
    r"""Multi-head scaled dot-product attention.

    The queries, keys and values are projected by :class:`inox.nn.Linear` layers
    (:py:`lin_q`, :py:`lin_k`, :py:`lin_v`) into :math:`N` heads of :math:`H`
    features; each head computes

    .. math:: \mathrm{softmax} \left( \frac{Q K^T}{\sqrt{H}} \right) V

    and the concatenated heads go through an output projection without bias
    (:py:`lin_y`).

    Arguments:
        in_features: The number of input features :math:`C`.
        out_features: The number of output features; :math:`C` if :py:`None`.
        hid_features: The number of features per head :math:`H`; :math:`C / N` if
            :py:`None`.
        heads: The number of heads :math:`N`.
        bias: Whether the query, key and value projections have biases.
        causal: Whether query :math:`i` may only attend to the keys :math:`j` with
            :math:`j - i \leq T - S`, for :math:`S` queries and :math:`T` keys.
        dropout: The probability of dropping an attention weight, when the call is given
            a key. An array leaf.
        key: A PRNG key for initialization; drawn from
            :py:`inox.random.get_rng('init')` if :py:`None`.

    Example:
        >>> attn = nn.MultiheadAttention(16, heads=4, causal=True, key=jax.random.key(0))
        >>> x = jnp.ones((2, 10, 16))
        >>> attn(x).shape  # self-attention
        (2, 10, 16)
        >>> attn(x, jnp.ones((2, 7, 16))).shape  # cross-attention
        (2, 10, 16)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        hid_features: int | None = None,
        heads: int = 1,
        bias: bool = True,
        causal: bool = False,
        dropout: float | Array = 0.0,
        key: Array | None = None,
    ):
        keys = get_rng("init").split(4) if key is None else jax.random.split(key, 4)
        out_features = in_features if out_features is None else out_features
        hid_features = in_features // heads if hid_features is None else hid_features

        self.lin_q = Linear(in_features, hid_features * heads, bias, key=keys[0])
        self.lin_k = Linear(in_features, hid_features * heads, bias, key=keys[1])
        self.lin_v = Linear(in_features, hid_features * heads, bias, key=keys[2])
        self.lin_y = Linear(hid_features * heads, out_features, False, key=keys[3])

        self.heads = heads
        self.causal = causal
        self.dropout = jnp.asarray(dropout)

    def __call__(
        self,
        xq: Array,
        xk: Array | None = None,
        xv: Array | None = None,
        mask: Array | None = None,
        key: Array | None = None,
    ) -> Array:
        r"""
        Arguments:
            xq: The query inputs, of shape :py:`(*, S, C)`.
            xk: The key inputs, of shape :py:`(*, T, C)`; :py:`xq` if :py:`None`
                (self-attention).
            xv: The value inputs, of shape :py:`(*, T, C)`; :py:`xk` if :py:`None`.
            mask: A boolean array broadcastable to :py:`(*, N, S, T)`, :py:`True` where
                a query may attend to a key. It is combined with the causal mask, if
                any. A query that may attend to no key gets uniform weights.
            key: A PRNG key for dropout; no dropout if :py:`None`.

        Returns:
            The outputs, of shape :py:`(*, S, C')`.
        """

        xk = xq if xk is None else xk
        xv = xk if xv is None else xv

        def split(x: Array) -> Array:  # (*, L, N * H) -> (*, N, L, H)
            return jnp.swapaxes(x.reshape(*x.shape[:-1], self.heads, -1), -2, -3)

        q = split(self.lin_q(xq))
        k = split(self.lin_k(xk))
        v = split(self.lin_v(xv))

        S, T = q.shape[-2], k.shape[-2]

        if self.causal:
            causal = jnp.tril(jnp.ones((S, T), dtype=bool), T - S)
            mask = causal if mask is None else jnp.logical_and(mask, causal)

        if key is not None:
            weights = (*jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2]), S, T)  # (*, N, S, T)
            shape = weights if mask is None else jnp.broadcast_shapes(weights, mask.shape)
            keep = jax.random.bernoulli(key, 1 - self.dropout, shape)
            mask = keep if mask is None else jnp.logical_and(mask, keep)

        y = jnp.swapaxes(attention(q, k, v, mask), -2, -3)  # (*, S, N, H)
        y = y.reshape(*y.shape[:-2], -1)

        return self.lin_y(y)
