r"""inox: a lean JAX neural-network library whose modules are PyTrees and whose shared
layers and parameters keep their identity through every JAX transformation.

The lifted transformations of :mod:`inox.api` (:func:`inox.jit`, :func:`inox.grad`,
...) are available at the top level, as in the original inox."""

__version__ = "0.1.0"

from . import api, debug, errors, lift, nn, numpy, random, tree
from .api import *
