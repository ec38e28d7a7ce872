r"""Models shared by the tests and by ``fixtures/make_fixtures.py``, imported as
``models``: pytest puts this folder on ``sys.path`` for the tests here, and
``tests/inox/test_share.py`` and ``fixtures/make_fixtures.py`` put it there themselves
(``multihost_worker.py``, run as a script from here, finds it as ``sys.path[0]``).

The committed fixtures are made from these functions, and the fixture tests rebuild
them to check the values read back: changing a function here means regenerating the
fixtures (``python fixtures/make_fixtures.py --overwrite``), which should only ever be
done on purpose.

Example:
    >>> model = WeightSharingMLP(jax.random.key(0), features=4)
    >>> model.l1 is model.l2, model.l3.weight is model.l4.weight
    (True, True)
    >>> UntiedMLP(jax.random.key(0), features=4).l1 is not None
    True
"""

from __future__ import annotations

__all__ = [
    "WeightSharingMLP",
    "UntiedMLP",
    "assert_tied",
    "seed_model",
    "dtype_zoo",
    "x64_arrays",
    "bits_equal",
    "assert_trees_bits_equal",
]

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from typing import Any, Dict

import inox.nn as nn

SEED_KEY = 0  #: The PRNG seed of the seed model fixture.


class WeightSharingMLP(nn.Scope):
    r"""The weight-sharing MLP of the ``inox.nn.share`` specification: ``l2`` is
    ``l1`` (tag ``'l1'``) and ``l4.weight`` is ``l3.weight`` (tag ``'l3.weight'``).

    Example:
        >>> model = WeightSharingMLP(jax.random.key(0), features=4)
        >>> model(jnp.ones(4)).shape
        (4,)
    """

    def __init__(self, key: jax.Array, features: int = 64):
        keys = jax.random.split(key, 3)

        self.l1 = nn.Linear(in_features=features, out_features=features, key=keys[0])
        self.l3 = nn.Linear(in_features=features, out_features=features, key=keys[1])
        self.l4 = nn.Linear(in_features=features, out_features=features, key=keys[2])

        self.l1 = nn.Reference("l1", self.l1)
        self.l2 = self.l1  # tied layer
        self.l3.weight = nn.Reference("l3.weight", self.l3.weight)
        self.l4.weight = self.l3.weight  # tied parameter

        self.relu = nn.ReLU()

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.l1(x)
        x = self.l2(self.relu(x))
        x = self.l3(self.relu(x))
        return self.l4(self.relu(x))


class UntiedMLP(nn.Scope):
    r"""The same layers as :class:`WeightSharingMLP`, without any tie.

    Example:
        >>> model = UntiedMLP(jax.random.key(0), features=4)
        >>> model.l1 is model.l2
        False
    """

    def __init__(self, key: jax.Array, features: int = 64):
        keys = jax.random.split(key, 4)

        self.l1 = nn.Linear(in_features=features, out_features=features, key=keys[0])
        self.l2 = nn.Linear(in_features=features, out_features=features, key=keys[1])
        self.l3 = nn.Linear(in_features=features, out_features=features, key=keys[2])
        self.l4 = nn.Linear(in_features=features, out_features=features, key=keys[3])
        self.relu = nn.ReLU()


def assert_tied(model: Any) -> None:
    r"""Asserts the two ties of a :class:`WeightSharingMLP`, or of a tree built like one
    (transformed, restored, abstract): ``l2`` is ``l1`` and ``l4.weight`` is ``l3.weight``,
    both held by references.

    Example:
        >>> assert_tied(WeightSharingMLP(jax.random.key(0), features=4))
    """

    assert isinstance(model.l1, nn.Reference) and isinstance(model.l3.weight, nn.Reference)
    assert model.l1 is model.l2
    assert model.l3.weight is model.l4.weight


def seed_model() -> WeightSharingMLP:
    r"""The model of the ``seed`` fixtures: 64x64 layers from :py:`jax.random.key(0)`."""

    return WeightSharingMLP(jax.random.key(SEED_KEY))


def _all_bytes(dtype: Any) -> np.ndarray:
    # Every bit pattern of an 8-bit float: NaNs, infinities, -0 and subnormals included.
    return np.arange(256, dtype=np.uint8).view(dtype)


def _float16_bits(dtype: Any) -> np.ndarray:
    # A spread of bit patterns (a prime step), plus the special values of both 16-bit floats.
    spread = np.arange(0, 2**16, 251, dtype=np.uint16)
    special = np.array([0x0000, 0x8000, 0x0001, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x7F80, 0xFF80, 0x7FC0, 0x7F81], np.uint16)
    return np.concatenate([spread, special]).view(dtype)


def _floats(dtype: Any) -> np.ndarray:
    info = np.finfo(dtype)
    values = [0.0, -0.0, 1.5, -2.25, np.pi, np.inf, -np.inf, np.nan, info.max, info.min, info.tiny, info.smallest_subnormal]
    return np.array(values, dtype=dtype)


def _ints(dtype: Any) -> np.ndarray:
    info = ml_dtypes.iinfo(dtype)
    if info.bits <= 4:
        return np.arange(int(info.min), int(info.max) + 1).astype(dtype)  # every value
    return np.array([info.min, info.min + 1, 0, 1, info.max - 1, info.max], dtype=dtype)


def _complex(dtype: Any) -> np.ndarray:
    parts = np.array([0.0, -0.0, 1.5, np.inf, np.nan, -3.0])
    out = np.zeros(len(parts), dtype)
    out.real, out.imag = parts, parts[::-1]  # set apart: 1j * inf would make a NaN real part
    return out


def x64_arrays() -> Dict[str, np.ndarray]:
    r"""The 64-bit arrays of the dtype zoo, which JAX narrows without ``jax_enable_x64``.

    Example:
        >>> sorted(x64_arrays())
        ['complex128', 'empty_float64', 'float64', 'int64', 'scalar_int64', 'uint64']
    """

    return {
        "complex128": _complex(np.complex128),
        "empty_float64": np.zeros((0, 3), np.float64),
        "float64": _floats(np.float64),
        "int64": _ints(np.int64),
        "scalar_int64": np.array(-(2**62) - 7, np.int64),
        "uint64": _ints(np.uint64),
    }


def dtype_zoo() -> nn.Scope:
    r"""A small tree with every dtype that round-trips exactly, ties with tuple and int
    tags, an implicit alias and JSON static leaves: the model of the ``dtypes`` fixtures.

    Every value is given by a formula (no PRNG), so it is the same in every JAX version.

    Example:
        >>> zoo = dtype_zoo()
        >>> zoo.x32['float8_e4m3fn'].shape, zoo.x32['int4'].dtype.name
        ((256,), 'int4')
        >>> zoo.x32['again'] is zoo.x32['float32']  # implicit sharing
        True
    """

    x32: Dict[str, Any] = {
        "bool": np.array([True, False, False, True, True]),
        "bfloat16": _float16_bits(ml_dtypes.bfloat16),
        "float16": _float16_bits(np.float16),
        "float32": _floats(np.float32),
        "complex64": _complex(np.complex64),
        "float4_e2m1fn": np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn),
        "scalar_float32": np.array(-3.25, np.float32),
        "scalar_bfloat16": np.array(7.5, ml_dtypes.bfloat16),
        "scalar_bool": np.array(True),
        "empty_float32": np.zeros((0,), np.float32),
        "empty_bfloat16": np.zeros((2, 0, 3), ml_dtypes.bfloat16),
        "matrix_float32": np.arange(12, dtype=np.float32).reshape(3, 4) / 8,
    }
    for name in ("float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn",
                 "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"):  # fmt: skip
        x32[name] = _all_bytes(getattr(ml_dtypes, name))
    for name in ("int8", "int16", "int32", "uint8", "uint16", "uint32"):
        x32[name] = _ints(np.dtype(name))
    for name in ("int2", "int4", "uint2", "uint4"):
        x32[name] = _ints(getattr(ml_dtypes, name))
    x32["again"] = x32["float32"]  # the same object twice: implicit sharing

    # Key data is given, not drawn, so that it never depends on the PRNG's version.
    keys = {
        "threefry": jax.random.wrap_key_data(np.array([0, 42], np.uint32), impl="threefry2x32"),
        "threefry_batch": jax.random.wrap_key_data(np.arange(6, dtype=np.uint32).reshape(3, 2), impl="threefry2x32"),
        "rbg": jax.random.wrap_key_data(np.array([1, 2, 3, 4], np.uint32), impl="rbg"),
        "unsafe_rbg": jax.random.wrap_key_data(np.array([[5, 6, 7, 8]], np.uint32), impl="unsafe_rbg"),
        "empty": jax.random.wrap_key_data(np.zeros((0, 2), np.uint32), impl="threefry2x32"),
    }

    block = nn.Parameter(np.arange(6, dtype=np.float32).reshape(2, 3))
    seven = nn.Parameter(np.array([7, 7, 7], np.int32))
    return nn.Scope(
        x32=x32,
        x64=x64_arrays(),
        keys=keys,
        first=nn.Reference(("block", 0), block),
        second=nn.Reference(("block", 0), block),
        lucky=[nn.Reference(7, seven), nn.Reference(7, seven)],
        name="dtype-zoo",
        depth=3,
        ratio=0.5,
        flag=True,
        nothing=None,
    )


def bits_equal(a: Any, b: Any) -> bool:
    r"""Whether two arrays have the same dtype, shape and bytes (NaN payloads, -0 and
    PRNG key data included).

    Example:
        >>> bits_equal(np.array([np.nan]), np.array([np.nan])), bits_equal(np.zeros(1), -np.zeros(1))
        (True, False)
    """

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    return a.tobytes() == b.tobytes()


def assert_trees_bits_equal(actual: Any, expected: Any) -> None:
    r"""Asserts that two trees have the same structure and bit-identical arrays, and
    names every path that differs.

    Example:
        >>> assert_trees_bits_equal({'a': np.ones(2)}, {'a': np.ones(2)})
    """

    actual_leaves = dict(jax.tree_util.tree_leaves_with_path(actual))
    expected_leaves = dict(jax.tree_util.tree_leaves_with_path(expected))
    assert list(map(jax.tree_util.keystr, actual_leaves)) == list(map(jax.tree_util.keystr, expected_leaves))
    differing = [
        f"{jax.tree_util.keystr(path)}: {actual_leaves[path]!r} != {leaf!r}"
        for path, leaf in expected_leaves.items()
        if not bits_equal(actual_leaves[path], leaf)
    ]
    assert not differing, "\n".join(differing)
