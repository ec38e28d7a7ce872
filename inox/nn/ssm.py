r"""State space model (SSM) layers."""

from __future__ import annotations

__all__ = [
    "SISO",
    "S4",
]

import jax
import jax.numpy as jnp
import math
import numpy as np

from jax import Array
from typing import Tuple

from .module import ComplexParameter, Module, Parameter
from ..random import get_rng


class SISO(Module):
    r"""Base class of single-input single-output (SISO) state space models.

    Such a model is the linear system

    .. math::
        \dot{x}(t) & = A x(t) + B u(t) \\
        y(t) & = C x(t)

    of a scalar input :math:`u`, a hidden state :math:`x \in \mathbb{C}^H` and a
    scalar output :math:`y`. Sampled every :math:`\Delta`, it becomes
    :math:`x_i = \bar{A} x_{i-1} + \bar{B} u_i`, :math:`y_i = \bar{C} x_i`, and, from
    :math:`x_0 = 0`, the convolution :math:`y_{1:L} = \bar{k}_{1:L} * u_{1:L}` with
    :math:`\bar{k}_i = \bar{C} \bar{A}^{i-1} \bar{B}`.

    Subclasses define :meth:`discrete`, which gives :math:`(\bar{A}, \bar{B},
    \bar{C})`, and :meth:`kernel`, which gives :math:`\bar{k}_{1:L}`.
    """

    def __call__(self, u: Array) -> Array:
        r"""
        Arguments:
            u: The input signal :math:`u_{1:L}`, of shape :py:`(*, L)`; real signals
                are promoted to complex ones.

        Returns:
            The (complex) output signal :math:`y_{1:L}`, of shape :py:`(*, L)`.
        """

        length = u.shape[-1]
        k = self.kernel(length)
        # A linear (not circular) convolution: FFTs of twice the length.
        y = jnp.fft.ifft(jnp.fft.fft(k, 2 * length) * jnp.fft.fft(u, 2 * length, axis=-1), axis=-1)
        return y[..., :length]

    def discrete(self) -> Tuple[Array, Array, Array]:
        r"""Returns :math:`\bar{A}`, :math:`\bar{B}` and :math:`\bar{C}`, of shapes
        :py:`(H, H)`, :py:`(H,)` and :py:`(H,)`."""

        raise NotImplementedError

    def kernel(self, length: int) -> Array:
        r"""Returns the kernel :math:`\bar{k}_{1:L}`, of shape :py:`(L,)`.

        Arguments:
            length: The length :math:`L`.
        """

        raise NotImplementedError


class Eigenvalue(ComplexParameter):
    r"""A complex parameter whose real part stays negative (a stable eigenvalue): it
    is stored as the logarithm of its opposite, :py:`log_real`, next to :py:`imag`.

    Example:
        >>> lam = Eigenvalue(jnp.asarray([-0.5 + 1j]))
        >>> lam(), sorted(vars(lam))
        (Array([-0.5+1.j], dtype=complex64), ['imag', 'log_real'])
    """

    _stored = ("value", "real", "imag", "log_real")

    def __init__(self, value: Array):
        value = jnp.asarray(value)
        self.log_real = jnp.log(-jnp.real(value))
        self.imag = jnp.imag(value)

    @property
    def real(self) -> Array:
        return -jnp.exp(self.log_real)


class S4(SISO):
    r"""Structured state space sequence model (S4), with a diagonal plus low-rank
    state matrix initialized from HiPPO.

    Parameters: the eigenvalues :py:`A` (real parts kept negative), the low-rank
    factor :py:`P`, :py:`B` and :py:`C` (complex), and the logarithm of the step,
    :py:`log_dt`, drawn in :math:`[\log 10^{-3}, \log 10^{-1}]`.

    Arguments:
        hid_features: The size :math:`H` of the hidden state.
        key: A PRNG key for initialization; drawn from
            :py:`inox.random.get_rng('init')` if :py:`None`.

    Example:
        >>> ssm = nn.S4(hid_features=16, key=jax.random.key(0))
        >>> y = ssm(jnp.linspace(0.0, 1.0, 128))
        >>> y.shape, y.dtype
        ((128,), dtype('complex64'))
    """

    def __init__(self, hid_features: int, key: Array | None = None):
        keys = get_rng("init").split(3) if key is None else jax.random.split(key, 3)
        lam, p = S4.DPLR_HiPPO(hid_features)

        self.A = Eigenvalue(lam)
        self.P = ComplexParameter(p)
        self.B = ComplexParameter(jax.random.normal(keys[0], (hid_features,), jnp.complex64))
        self.C = ComplexParameter(
            jax.random.normal(keys[1], (hid_features,), jnp.complex64) / math.sqrt(hid_features)
        )
        self.log_dt = Parameter(jax.random.uniform(keys[2], (), minval=math.log(1e-3), maxval=math.log(1e-1)))

    @staticmethod
    def DPLR_HiPPO(n: int) -> Tuple[np.ndarray, np.ndarray]:
        r"""Returns the diagonal plus low-rank form :math:`V (\Lambda - P P^*) V^*` of
        the HiPPO-LegS matrix of size :math:`n`: the eigenvalues :math:`\Lambda` of
        its normal part and the low-rank factor :math:`P`, in the eigenbasis.

        Example:
            >>> lam, p = nn.S4.DPLR_HiPPO(4)
            >>> lam.real, p.shape
            (array([-0.5, -0.5, -0.5, -0.5]), (4,))
        """

        p = np.sqrt(np.arange(n) + 0.5)
        # The normal part of HiPPO-LegS is -1/2 plus a skew-symmetric matrix, whose
        # eigenvalues are imaginary: those of the Hermitian -iS, times i.
        s = np.outer(p, p)
        skew = np.tril(s) - np.triu(s)
        imag, v = np.linalg.eigh(-1j * skew)
        return -0.5 + 1j * imag, v.conj().T @ p

    def discrete(self) -> Tuple[Array, Array, Array]:
        r"""Discretizes the system with the bilinear transform.

        Example:
            >>> ab, bb, cb = nn.S4(4, key=jax.random.key(0)).discrete()
            >>> ab.shape, bb.shape, cb.shape
            ((4, 4), (4,), (4,))
        """

        lam, p, b, c = self.A(), self.P(), self.B(), self.C()
        dt = jnp.exp(self.log_dt())

        # (2/dt - A)^-1, with A = diag(lam) - p p*, by the Woodbury identity.
        d = jnp.diag(1 / (2 / dt - lam))
        ppt = jnp.outer(p, p.conj())
        inverse = d - d @ ppt @ d / (1 + p.conj() @ d @ p)
        forward = jnp.diag(2 / dt + lam) - ppt

        return inverse @ forward, 2 * inverse @ b, c

    def kernel(self, length: int) -> Array:
        lam, p, b, c = self.A(), self.P(), self.B(), self.C()
        dt = jnp.exp(self.log_dt())

        # The kernel of length L is the inverse DFT of its generating function at the
        # L roots of unity, in which C appears as (I - Ab^L)^T C.
        ab, _, _ = self.discrete()
        ct = c - jnp.linalg.matrix_power(ab, length).T @ c

        z = jnp.exp(-2j * math.pi / length * jnp.arange(length))
        w = 2 / dt * (1 - z) / (1 + z)

        # Cauchy products of the four pairs, then the Woodbury correction of the
        # low-rank term.
        numerators = jnp.stack((ct * b, ct * p, p.conj() * b, p.conj() * p))
        k00, k01, k10, k11 = jnp.sum(numerators[:, None] / (w[:, None] - lam), axis=-1)
        at_roots = 2 / (1 + z) * (k00 - k01 / (1 + k11) * k10)

        return jnp.fft.ifft(at_roots)
