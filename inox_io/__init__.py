r"""inox_io: checkpoints that store each shared array once and restore shared identity.

The public names are imported at their first use (:pep:`562`): ``import inox_io``
imports no JAX, so that the ``inox-io`` command answers ``--help`` at once.

Example:
    >>> import tempfile
    >>> p = nn.Parameter(jnp.ones(3))
    >>> tree = nn.Scope(a=nn.Reference('p', p), b=nn.Reference('p', p))
    >>> path = tempfile.mkdtemp() + '/tied.safetensors'
    >>> _ = inox_io.save(path, tree)
    >>> restored = inox_io.load(path, tree)
    >>> restored.a is restored.b
    True
"""

from typing import TYPE_CHECKING, Any, List

from .version import __version__

__all__ = [
    "save",
    "load",
    "inspect",
    "verify",
    "convert",
    "abstract",
    "CheckpointError",
    "CheckpointManager",
    "DirectoryLockedError",
    "Manifest",
    "ArrayInfo",
    "TieInfo",
    "torch_names",
    "TRANSPOSE",
]

if TYPE_CHECKING:  # what type checkers and IDEs see: the names themselves
    from .public import *  # noqa: F403


def __getattr__(name: str) -> Any:
    r"""A public name, imported at its first use with every other (:mod:`inox_io.public`).

    Other names fail at once: ``from . import keypath`` asks for its name here before
    it imports the module, and must not import JAX.
    """

    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import public

    globals().update({key: getattr(public, key) for key in __all__})  # found without this function from now on
    return globals()[name]


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
