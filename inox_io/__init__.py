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

import importlib

from typing import TYPE_CHECKING, Any, List

from .version import __version__

#: Each public name and the module that defines it.
EXPORTS = {
    "save": "api",
    "load": "api",
    "inspect": "api",
    "verify": "api",
    "convert": "api",
    "abstract": "api",
    "CheckpointError": "errors",
    "CheckpointManager": "manager",
    "DirectoryLockedError": "manager",
    "Manifest": "manifest",
    "ArrayInfo": "manifest",
    "TieInfo": "manifest",
    "torch_names": "names",
    "TRANSPOSE": "names",
}

__all__ = list(EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see: the eager imports
    from .api import abstract, convert, inspect, load, save, verify
    from .errors import CheckpointError
    from .manager import CheckpointManager, DirectoryLockedError
    from .manifest import ArrayInfo, Manifest, TieInfo
    from .names import TRANSPOSE, torch_names


def __getattr__(name: str) -> Any:
    r"""Imports a public name, or a submodule (``inox_io.formats``), at its first use."""

    module = EXPORTS.get(name)
    if module is None:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise  # a submodule that failed to import something else
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups find it without this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
