r"""The public names of :mod:`inox_io`, imported together: the package imports this
module at the first use of any of them (and JAX with it).

Example:
    >>> from inox_io import public
    >>> public.save is inox_io.save
    True
"""

from .api import abstract, convert, inspect, load, save, verify
from .errors import CheckpointError
from .manager import CheckpointManager, DirectoryLockedError
from .manifest import ArrayInfo, Manifest, TieInfo
from .names import TRANSPOSE, torch_names

