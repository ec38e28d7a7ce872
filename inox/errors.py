r"""The exception raised where a function is used against its contract, and the warning
given where a static value may make :func:`jax.jit` compile again and again.

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

__all__ = ["UsageError", "RecompilationWarning"]


class UsageError(ValueError, AssertionError):
    r"""A function was used against its contract (a bad argument, or a bad moment)."""


class RecompilationWarning(UserWarning):
    r"""A value made static (part of a tree definition, see :class:`inox.tree.Static`)
    is likely to differ from call to call, so that :func:`jax.jit` compiles again.

    It is a :class:`UserWarning`, the class of the original inox's warning, so filters
    and :func:`pytest.warns` written for the original still apply.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter('always')
        ...     _ = inox.tree.Static([1, 2])
        >>> caught[0].category.__name__, issubclass(caught[0].category, UserWarning)
        ('RecompilationWarning', True)
    """
