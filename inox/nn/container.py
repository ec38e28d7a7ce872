r"""Containers of modules."""

from __future__ import annotations

__all__ = [
    "Sequential",
]

from typing import Any, Callable

from .module import Module


class Sequential(Module):
    r"""Calls its layers in order, each on the output of the previous one.

    It is represented by its layers, one per line.

    Arguments:
        layers: The layers, kept in the list :py:`self.layers`.

    Example:
        >>> model = nn.Sequential(
        ...     nn.Linear(3, 8, key=jax.random.key(0)),
        ...     nn.ReLU(),
        ...     nn.Linear(8, 1, key=jax.random.key(1)),
        ... )
        >>> model(jnp.ones((5, 3))).shape
        (5, 1)
        >>> nn.Sequential(nn.ReLU(), nn.Tanh())
        Sequential(
          ReLU(),
          Tanh()
        )
    """

    def __init__(self, *layers: Callable[[Any], Any]):
        self.layers = list(layers)

    def __call__(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def __prepr__(self, printer, indent: int) -> str:
        return printer.broken(f"{type(self).__name__}(", [("", layer) for layer in self.layers], ")")
