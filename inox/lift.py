r"""The lifted transformations of :mod:`inox.api`, under the module name that the
original inox gives them since version 0.8.

Example:
    >>> inox.lift.jit is inox.api.jit is inox.jit
    True
"""

from __future__ import annotations

__all__ = [
    "automask",
    "jit",
    "grad",
    "value_and_grad",
    "jacfwd",
    "jacrev",
    "hessian",
    "checkpoint",
    "vmap",
    "pmap",
    "inner",
    "outer",
]

from .api import automask, checkpoint, grad, hessian, inner, jacfwd, jacrev, jit, outer, pmap, value_and_grad, vmap
