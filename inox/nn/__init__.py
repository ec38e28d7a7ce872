r"""Neural networks: modules, parameters, shared references, state and layers."""

from .activation import *
from .linear import *
from .module import *
from .share import *
