r"""A GPT-2-shaped language model in inox, its output head tied to its token embedding,
laid out so that :func:`inox_io.torch_names` gives the Hugging Face names
(``transformer.h.0.attn.c_attn.weight``, ...).

GPT-2's attention and MLP projections are Hugging Face ``Conv1D`` layers, whose weights
are stored ``(in, out)`` like :class:`inox.nn.Linear`'s: no transpose is needed.

Example:
    >>> model = GPT2(Config(), key=jax.random.key(0))
    >>> model.lm_head is model.transformer.wte
    True
    >>> model(jnp.arange(5)).shape
    (5, 50)
    >>> sorted(inox_io.torch_names(p) for p in inox_io.manifest.build(model)[0].positions())[:3]
    ['lm_head.weight', 'transformer.h.0.attn.c_attn.bias', 'transformer.h.0.attn.c_attn.weight']
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import math

from jax import Array
from typing import Any, Mapping, NamedTuple

import inox.nn as nn


class Config(NamedTuple):
    r"""The sizes of the model; the defaults are those of ``fixtures/hf``."""

    vocab_size: int = 50
    n_positions: int = 16
    n_embd: int = 16
    n_head: int = 2
    n_layer: int = 2
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> Config:
        r"""The sizes of a Hugging Face ``config.json``."""

        return cls(**{name: config[name] for name in cls._fields if name in config})


class LayerNorm(nn.Module):
    r"""Hugging Face's ``LayerNorm``: a normalization with a learned scale (``weight``)
    and shift (``bias``), and a Python float epsilon (a hyper-parameter, not stored)."""

    def __init__(self, features: int, eps: float):
        self.eps = eps
        self.weight = nn.Parameter(jnp.ones(features))
        self.bias = nn.Parameter(jnp.zeros(features))

    def __call__(self, x: Array) -> Array:
        mean = x.mean(axis=-1, keepdims=True)
        variance = x.var(axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(variance + self.eps) * self.weight() + self.bias()


class Attention(nn.Module):
    r"""Causal self-attention with fused query-key-value projection (``c_attn``)."""

    def __init__(self, config: Config, *, key: Array):
        k1, k2 = jax.random.split(key)
        self.heads = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, key=k1)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, key=k2)

    def __call__(self, x: Array) -> Array:
        q, k, v = (y.reshape(*y.shape[:-1], self.heads, -1) for y in jnp.split(self.c_attn(x), 3, axis=-1))
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
        causal = jnp.tril(jnp.ones((x.shape[-2], x.shape[-2]), dtype=bool))
        weights = jax.nn.softmax(jnp.where(causal, logits, jnp.finfo(logits.dtype).min), axis=-1)
        y = jnp.einsum("...hqk,...khd->...qhd", weights, v)
        return self.c_proj(y.reshape(*y.shape[:-2], -1))


class MLP(nn.Module):
    def __init__(self, config: Config, *, key: Array):
        k1, k2 = jax.random.split(key)
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, key=k1)
        self.act = nn.GELU(approximate=True)  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, key=k2)

    def __call__(self, x: Array) -> Array:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: Config, *, key: Array):
        k1, k2 = jax.random.split(key)
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, key=k1)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config, key=k2)

    def __call__(self, x: Array) -> Array:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: Config, *, key: Array):
        keys = jax.random.split(key, config.n_layer + 2)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd, key=keys[0])
        self.wpe = nn.Embedding(config.n_positions, config.n_embd, key=keys[1])
        self.h = [Block(config, key=k) for k in keys[2:]]
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT2(nn.Scope):
    r"""Token ids ``(*, L)`` to logits ``(*, L, vocab_size)``; :py:`lm_head` is the token
    embedding itself (one :class:`inox.nn.Reference`), as in GPT-2."""

    def __init__(self, config: Config, *, key: Array):
        self.transformer = Transformer(config, key=key)
        self.transformer.wte = nn.Reference("wte", self.transformer.wte)
        self.lm_head = self.transformer.wte

    def __call__(self, ids: Array) -> Array:
        t = self.transformer
        x = t.wte(ids) + t.wpe(jnp.arange(ids.shape[-1]))
        for block in t.h:
            x = block(x)
        return self.lm_head.attend(t.ln_f(x))
