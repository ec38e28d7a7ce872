r"""inox_io: checkpoints that store each shared array once and restore shared identity."""

__version__ = "0.1.0"
