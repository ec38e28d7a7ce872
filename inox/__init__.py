r"""inox: a lean JAX neural-network library whose modules are PyTrees and whose shared
layers and parameters keep their identity through every JAX transformation."""

__version__ = "0.1.0"

from . import nn, tree
