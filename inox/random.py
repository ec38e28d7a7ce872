r"""Pseudo-random number generators that split their own keys, and named generators
set for the span of a context.

Layers whose :py:`key` argument is left to :py:`None` draw it from the generator
named :py:`'init'` (initialization) or :py:`'dropout'` (see :func:`set_rng`).

Example:
    >>> with inox.random.set_rng(init=inox.random.PRNG(0)):
    ...     layer = nn.Linear(3, 5)  # no key: drawn from the 'init' generator
    >>> layer.weight.shape
    (3, 5)
"""

from __future__ import annotations

__all__ = [
    "PRNG",
    "set_rng",
    "get_rng",
]

import functools
import jax

from contextlib import contextmanager
from jax import Array
from typing import Any, Callable, Dict, Iterator

from .debug import same_trace
from .errors import UsageError
from .tree import Namespace


class PRNG(Namespace):
    r"""A pseudo-random number generator: a PRNG key, its :py:`state`, that is split
    anew for every key it gives.

    Any function of :mod:`jax.random` can be called as a method, with a fresh key as
    first argument: :py:`rng.normal((5,))` is :py:`jax.random.normal(rng.split(),
    (5,))`.

    A generator is a PyTree whose leaf is its state. Its keys must be drawn in the
    trace in which the state was made: a state created outside of :func:`jax.jit` and
    split inside it would give the same keys on every call of the compiled function,
    so this raises :class:`inox.errors.UsageError` instead.

    Arguments:
        seed: An integer seed, or a PRNG key used as the state.
        kwargs: Keyword arguments of :func:`jax.random.PRNGKey` (for an integer seed).

    Example:
        >>> rng = PRNG(42)
        >>> rng.split()
        Array([1832780943,  270669613], dtype=uint32)
        >>> rng.split(3).shape
        (3, 2)
        >>> rng.normal((2,)).shape
        (2,)
        >>> PRNG(jax.random.key(0)).split().dtype
        key<fry>
    """

    def __init__(self, seed: int | Array, **kwargs: Any):
        if isinstance(seed, int):
            self.state = jax.random.PRNGKey(seed, **kwargs)
        else:
            self.state = seed

    def __getattr__(self, name: str) -> Any:
        # Dunders and private names are looked up by pickle, copy and JAX themselves.
        if name.startswith("_"):
            raise AttributeError(name)

        attr = getattr(jax.random, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def sample(*args: Any, **kwargs: Any) -> Any:
            return attr(self.split(), *args, **kwargs)

        return sample

    def split(self, num: int | None = None) -> Array:
        r"""Returns a new key, or a vector of :py:`num` keys, and advances the state.

        Arguments:
            num: The number of keys, or :py:`None` for one key without a batch axis.

        Example:
            >>> rng = PRNG(0)
            >>> a, b = rng.split(), rng.split()
            >>> bool((a == b).all())
            False
        """

        keys = jax.random.split(self.state, 2 if num is None else num + 1)

        if not same_trace(self.state, keys):
            raise UsageError("the RNG state was initialized and used within different JIT traces.")

        if num is None:
            key, self.state = keys[0], keys[1]
        else:
            key, self.state = keys[:-1], keys[-1]

        return key


_rngs: Dict[str, PRNG] = {}


@contextmanager
def set_rng(**rngs: PRNG) -> Iterator[None]:
    r"""Sets named generators for the span of a context; the generators set before
    under the same names are back when it ends.

    Arguments:
        rngs: Generators by name.

    Example:
        >>> with set_rng(init=PRNG(0), dropout=PRNG(42)):
        ...     keys = get_rng('init').split(3)
        ...     mask = get_rng('dropout').bernoulli(shape=(2, 3))
        >>> keys.shape, mask.shape
        ((3, 2), (2, 3))
    """

    missing = object()
    before = {name: _rngs.get(name, missing) for name in rngs}
    _rngs.update(rngs)
    try:
        yield
    finally:
        for name, rng in before.items():
            if rng is missing:
                del _rngs[name]
            else:
                _rngs[name] = rng


def get_rng(name: str) -> PRNG:
    r"""Returns the generator set under a name by the innermost :func:`set_rng`.

    Arguments:
        name: The name of the generator.

    Raises:
        UsageError: if no generator is set under this name.

    Example:
        >>> with set_rng(init=PRNG(0)):
        ...     get_rng('init').split().shape
        (2,)
        >>> get_rng('init')
        Traceback (most recent call last):
          ...
        inox.errors.UsageError: no RNG state with name 'init' is set in this context.
    """

    if name not in _rngs:
        raise UsageError(f"no RNG state with name {name!r} is set in this context.")
    return _rngs[name]
