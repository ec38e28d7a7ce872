r"""Neural networks: modules, parameters, shared references, state and layers."""

from .activation import *
from .attention import *
from .container import *
from .conv import *
from .dropout import *
from .einops import *
from .interpolation import *
from .linear import *
from .module import *
from .normalization import *
from .padding import *
from .pooling import *
from .recurrent import *
from .share import *
from .ssm import *
from .state import *
