r"""Data type names as written in manifests, and their NumPy dtypes.

Only names from a fixed table are accepted when reading, so a file cannot make the
reader construct arbitrary objects.
"""

from __future__ import annotations

__all__ = ["dtype_name", "parse_dtype", "is_key_dtype"]

import jax
import ml_dtypes
import numpy as np

from typing import Dict

_STANDARD = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]  # fmt: skip

_ML_DTYPES = [
    "bfloat16", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn", "float8_e3m4",
    "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e8m0fnu", "int2", "int4", "uint2", "uint4",
]  # fmt: skip

DTYPES: Dict[str, np.dtype] = {name: np.dtype(name) for name in _STANDARD}
DTYPES.update({name: np.dtype(getattr(ml_dtypes, name)) for name in _ML_DTYPES if hasattr(ml_dtypes, name)})


#: The manifest name of each dtype, for the lookup on every array saved: NumPy computes
#: ``dtype.name`` in Python, slower than the rest of describing an array.
NAMES: Dict[np.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


def is_key_dtype(dtype) -> bool:
    r"""Returns whether :py:`dtype` is a typed PRNG key dtype (``key<fry>``).

    Example:
        >>> is_key_dtype(jax.random.key(0).dtype), is_key_dtype(jnp.float32)
        (True, False)
    """

    return not isinstance(dtype, np.dtype) and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def dtype_name(dtype) -> str:
    r"""Returns the manifest name of a dtype.

    Example:
        >>> dtype_name(jnp.bfloat16), dtype_name(np.float32)
        ('bfloat16', 'float32')
    """

    name = NAMES.get(dtype)
    if name is not None:
        return name
    if is_key_dtype(dtype):
        return str(dtype)
    name = np.dtype(dtype).newbyteorder("=").name  # stored little-endian: see host_bytes
    if name not in DTYPES:
        raise TypeError(f"dtype {name} cannot be saved")
    return name


def parse_dtype(name: str) -> np.dtype:
    r"""Returns the NumPy dtype of a manifest name.

    Raises:
        KeyError: if the name is not in the table.

    Example:
        >>> parse_dtype('bfloat16')
        dtype(bfloat16)
    """

    return DTYPES[name]
