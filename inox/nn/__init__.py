r"""Neural networks: modules, parameters, shared references, state and layers."""

from .activation import *
from .attention import *
from .container import *
from .conv import *
from .dropout import *
from .linear import *
from .module import *
from .normalization import *
from .share import *
from .state import *
