r"""The lifted transformations of :mod:`inox.api`, under the module name that the
original inox gives them since version 0.8.

Example:
    >>> inox.lift.jit is inox.api.jit is inox.jit
    True
"""

from __future__ import annotations

from . import api
from .api import *  # noqa: F403
from .api import inner, outer

# The names of inox.api, and the two helpers that the original's tests import.
__all__ = [*api.__all__, "inner", "outer"]
