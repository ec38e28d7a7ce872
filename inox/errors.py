r"""The exception raised where a function is used against its contract.

The original inox checks such uses with :py:`assert` statements. :class:`UsageError`
is both an :class:`AssertionError`, so that code written for the original catches it
as before, and a :class:`ValueError`, the usual exception for a bad argument; unlike an
:py:`assert`, its checks still run under :py:`python -O`.

Example:
    >>> from inox.errors import UsageError
    >>> try:
    ...     raise UsageError('the input tensor is not batched')
    ... except AssertionError as e:
    ...     isinstance(e, ValueError)
    True
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError, AssertionError):
    r"""A function was used against its contract (a bad argument, or a bad moment)."""
