r"""Recurrent layers: cells, and the layer that runs a cell along a sequence."""

from __future__ import annotations

__all__ = [
    "Cell",
    "Recurrent",
    "GRUCell",
    "LSTMCell",
    "GatedCell",
]

import jax
import jax.numpy as jnp

from jax import Array
from typing import Any, Tuple

from .linear import Linear
from .module import Module
from ..random import get_rng


class Cell(Module):
    r"""Base class of recurrent cells.

    A cell defines a recurrence :math:`(h_i, y_i) = f(h_{i-1}, x_i)` by its
    :py:`__call__`, and the initial hidden state :math:`h_0` by :meth:`init`. The
    recurrence must have no side effect: :class:`Recurrent` runs it in
    :func:`jax.lax.scan`.

    Example:
        >>> class Sum(nn.Cell):
        ...     def __call__(self, h, x):
        ...         return h + x, h + x
        ...     def init(self):
        ...         return jnp.zeros(())
        >>> nn.Recurrent(Sum())(jnp.arange(4.0))
        Array([0., 1., 3., 6.], dtype=float32)
    """

    def __call__(self, h: Any, x: Any) -> Tuple[Any, Any]:
        r"""
        Arguments:
            h: The previous hidden state :math:`h_{i-1}`.
            x: The input :math:`x_i`.

        Returns:
            The hidden state and output :math:`(h_i, y_i)`.
        """

        raise NotImplementedError

    def init(self) -> Any:
        r"""Returns the initial hidden state :math:`h_0`."""

        raise NotImplementedError


class Recurrent(Module):
    r"""Runs a cell along a sequence, from its initial state, and returns its outputs.

    Arguments:
        cell: The cell.
        reverse: Whether to run from the last element to the first.

    Example:
        >>> rnn = nn.Recurrent(nn.GRUCell(3, 8, key=jax.random.key(0)))
        >>> rnn(jnp.ones((10, 3))).shape  # (L, C) -> (L, H)
        (10, 8)
        >>> jax.vmap(rnn)(jnp.ones((4, 10, 3))).shape  # batches: vmap
        (4, 10, 8)
    """

    def __init__(self, cell: Cell, reverse: bool = False):
        self.cell = cell
        self.reverse = reverse

    def __call__(self, xs: Any) -> Any:
        r"""
        Arguments:
            xs: The inputs :math:`x_i`, stacked on the leading axis, such as an array
                of shape :py:`(L, C)`.

        Returns:
            The outputs :math:`y_i`, stacked on the leading axis.
        """

        _, ys = jax.lax.scan(self.cell, self.cell.init(), xs, reverse=self.reverse)
        return ys


class GatedCell(Cell):
    r"""Base class of the gated cells: a projection of the hidden state,
    :py:`lin_h`, and one of the input, :py:`lin_x`, each onto :py:`gates` blocks of
    :math:`H` features.

    Arguments:
        in_features: The number of input features :math:`C`.
        hid_features: The number of hidden features :math:`H`.
        bias: Whether the projections have biases.
        key: A PRNG key for initialization; drawn from
            :py:`inox.random.get_rng('init')` if :py:`None`.

    Example:
        >>> lstm = nn.LSTMCell(3, 8, key=jax.random.key(0))  # 4 gates
        >>> lstm.lin_h.weight.shape, lstm.lin_x.weight.shape
        ((8, 32), (3, 32))
    """

    gates: int  #: The number of gate blocks, set by each subclass.

    def __init__(self, in_features: int, hid_features: int, bias: bool = True, key: Array | None = None):
        keys = get_rng("init").split(2) if key is None else jax.random.split(key, 2)
        self.lin_h = Linear(hid_features, self.gates * hid_features, bias, key=keys[0])
        self.lin_x = Linear(in_features, self.gates * hid_features, bias, key=keys[1])
        self.hid_features = hid_features


class GRUCell(GatedCell):
    r"""Gated recurrent unit cell.

    .. math::
        r & = \sigma(W_{xr} x + W_{hr} h + b_r) \\
        z & = \sigma(W_{xz} x + W_{hz} h + b_z) \\
        g & = \tanh(W_{xg} x + b_{xg} + r \odot (W_{hg} h + b_{hg})) \\
        h' & = (1 - z) \odot g + z \odot h

    and the output is the new hidden state.

    Its arguments are those of :class:`GatedCell`.

    Example:
        >>> cell = nn.GRUCell(3, 8, key=jax.random.key(0))
        >>> h, y = cell(cell.init(), jnp.ones(3))
        >>> h.shape, bool((h == y).all())
        ((8,), True)
    """

    gates = 3

    def __call__(self, h: Array, x: Array) -> Tuple[Array, Array]:
        r"""
        Arguments:
            h: The previous hidden state, of shape :py:`(*, H)`.
            x: The input, of shape :py:`(*, C)`.

        Returns:
            The new hidden state, twice: as state and as output.
        """

        rh, zh, gh = jnp.split(self.lin_h(h), 3, axis=-1)
        rx, zx, gx = jnp.split(self.lin_x(x), 3, axis=-1)

        r = jax.nn.sigmoid(rx + rh)
        z = jax.nn.sigmoid(zx + zh)
        g = jnp.tanh(gx + r * gh)
        h = (1 - z) * g + z * h

        return h, h

    def init(self) -> Array:
        r"""Returns :math:`h_0 = 0`, of shape :py:`(H,)`."""

        return jnp.zeros(self.hid_features)


class LSTMCell(GatedCell):
    r"""Long short-term memory cell.

    .. math::
        (i, f, g, o) & = W_x x + W_h h + b \\
        c' & = \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
        h' & = \sigma(o) \odot \tanh(c')

    and the output is the new hidden state :math:`h'`.

    Its arguments are those of :class:`GatedCell`.

    Example:
        >>> cell = nn.LSTMCell(3, 8, key=jax.random.key(0))
        >>> (h, c), y = cell(cell.init(), jnp.ones(3))
        >>> h.shape, c.shape, bool((h == y).all())
        ((8,), (8,), True)
    """

    gates = 4

    def __call__(self, hc: Tuple[Array, Array], x: Array) -> Tuple[Tuple[Array, Array], Array]:
        r"""
        Arguments:
            hc: The previous hidden and cell states :math:`(h, c)`, each of shape
                :py:`(*, H)`.
            x: The input, of shape :py:`(*, C)`.

        Returns:
            The new states :math:`(h', c')`, and the output :math:`h'`.
        """

        h, c = hc
        i, f, g, o = jnp.split(self.lin_h(h) + self.lin_x(x), 4, axis=-1)

        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)

        return (h, c), h

    def init(self) -> Tuple[Array, Array]:
        r"""Returns :math:`h_0 = c_0 = 0`, each of shape :py:`(H,)`."""

        return jnp.zeros(self.hid_features), jnp.zeros(self.hid_features)
