r"""Debugging utilities."""

from __future__ import annotations

__all__ = [
    "same_trace",
]

import jax

from typing import Any


def _trace_of(x: Any) -> Any:
    # JAX exposes no public accessor for the trace of a tracer; `_trace` is the
    # attribute every tracer class has held since JAX became stackless (0.4.36).
    return x._trace if isinstance(x, jax.core.Tracer) else None


def same_trace(x: Any, y: Any, ignore_primal: bool = False) -> bool:
    r"""Returns whether two arrays come from the same trace: both concrete, or both
    tracers of the same transformation (the same :func:`jax.jit` trace, say).

    Arguments:
        x: An array.
        y: Another array.
        ignore_primal: Whether to look through differentiation (:func:`jax.grad`,
            :func:`jax.jvp`) to the primal values.

    Example:
        >>> x, y = jnp.zeros(2)
        >>> same_trace(x, y)
        True
        >>> jax.jit(lambda x, y: same_trace(x, y))(x, y)
        Array(True, dtype=bool)
        >>> jax.jit(lambda x: same_trace(x, y))(x)
        Array(False, dtype=bool)
        >>> jax.grad(lambda x: same_trace(x, y, ignore_primal=True) * x)(1.0)
        Array(1., dtype=float32, weak_type=True)
    """

    if ignore_primal:
        while hasattr(x, "primal"):
            x = x.primal
        while hasattr(y, "primal"):
            y = y.primal

    return _trace_of(x) is _trace_of(y)
