r"""inox_io: checkpoints that store each shared array once and restore shared identity.

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

from .version import __version__

from .api import abstract, convert, inspect, load, save, verify
from .errors import CheckpointError
from .manager import CheckpointManager
from .manifest import ArrayInfo, Manifest, TieInfo
from .names import TRANSPOSE, torch_names

__all__ = [
    "save",
    "load",
    "inspect",
    "verify",
    "convert",
    "abstract",
    "CheckpointError",
    "CheckpointManager",
    "Manifest",
    "ArrayInfo",
    "TieInfo",
    "torch_names",
    "TRANSPOSE",
]
