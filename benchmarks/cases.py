r"""The benchmarked trees, built concretely (random values) or abstractly (shapes only).

Every library gets the same arrays: inox_io gets the tree (ties declared with
:class:`inox.nn.Reference`), the other libraries a flat ``{name: array}`` dict in which a
tied array appears under each of its names (they have no notion of ties), and the raw
baseline the unique arrays, in order.
"""

from __future__ import annotations

__all__ = ["SIZES", "Data", "build"]

import dataclasses
import jax
import ml_dtypes
import numpy as np

from typing import Any, Callable, Dict, List, Tuple

import inox.nn as nn

Shape = Tuple[int, ...]

BLOCK_ITEMS = 2**22 + 17  #: random float32 numbers drawn once; odd, so windows rarely align

#: Per size: case a (arrays, rows, columns) of float32; case b (arrays, float32 items
#: each); case c (vocabulary, context, width, layers) of a GPT-2-shaped model in bf16.
SIZES: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "full": {"a": (8, 8192, 4096), "b": (2000, 8192), "c": (50257, 1024, 768, 12)},
    "quick": {"a": (8, 1024, 1024), "b": (200, 8192), "c": (8192, 256, 256, 2)},
    "tiny": {"a": (8, 64, 256), "b": (50, 256), "c": (512, 32, 32, 1)},
}

TITLES = {
    "a": "{0} float32 arrays of {1}x{2}",
    "b": "{0} float32 arrays of {1} items",
    "c": "GPT-2-shaped tied model, bf16, vocab {0}, context {1}, width {2}, {3} layers",
    "d": "async save of case a",
}


@dataclasses.dataclass
class Data:
    r"""One case's arrays, in the three shapes the libraries take."""

    tree: Any  #: for inox_io (ties declared)
    flat: Dict[str, Any]  #: for the other libraries (ties written under each name)
    unique: List[Any]  #: for the raw baseline, each array once

    @property
    def nbytes(self) -> int:
        r"""The bytes of the unique arrays: what a checkpoint must store."""

        return sum(_nbytes(x) for x in self.unique)

    @property
    def flat_nbytes(self) -> int:
        r"""The bytes a library that writes ties twice stores."""

        return sum(_nbytes(x) for x in self.flat.values())


def _nbytes(x: Any) -> int:
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize


def title(case: str, size: str) -> str:
    r"""A one-line description of a case at a size."""

    return TITLES[case].format(*SIZES[size].get(case, SIZES[size]["a"]))


def _factory(concrete: bool, seed: int) -> Callable[[Shape, Any], Any]:
    r"""Makes arrays: random normal values on the default device, or abstract ones.

    The values are windows of one block of random numbers, each at its own random
    offset: drawing a gigabyte of random numbers would take longer than the benchmark
    of it, and the arrays still all differ.
    """

    rng = np.random.default_rng(seed)
    block = rng.standard_normal(BLOCK_ITEMS, dtype=np.float32)

    def make(shape: Shape, dtype: Any) -> Any:
        if not concrete:
            return jax.ShapeDtypeStruct(shape, dtype)
        size = int(np.prod(shape))
        start = int(rng.integers(BLOCK_ITEMS))
        reps = -(-(start + size) // BLOCK_ITEMS)
        values = np.tile(block, reps)[start : start + size] if reps > 1 else block[start : start + size]
        values = values.astype(dtype).reshape(shape)  # a copy, even for float32
        out = jax.block_until_ready(jax.device_put(values))
        del values  # one array at a time on the host
        return out

    return make


def _many(count: int, shape: Shape, make: Callable) -> Data:
    flat = {f"w{i:04d}": make(shape, np.float32) for i in range(count)}
    return Data(dict(flat), flat, list(flat.values()))


def _gpt2(vocab: int, context: int, width: int, layers: int, make: Callable) -> Data:
    r"""GPT-2's parameter shapes; the token embedding is the output head (tied)."""

    dtype = ml_dtypes.bfloat16

    def p(*shape: int) -> nn.Parameter:
        return nn.Parameter(make(shape, dtype))

    def norm() -> Dict[str, nn.Parameter]:
        return {"scale": p(width), "bias": p(width)}

    blocks = [
        {
            "ln1": norm(),
            "attn": {"qkv_w": p(width, 3 * width), "qkv_b": p(3 * width), "out_w": p(width, width), "out_b": p(width)},
            "ln2": norm(),
            "mlp": {"fc_w": p(width, 4 * width), "fc_b": p(4 * width), "out_w": p(4 * width, width), "out_b": p(width)},
        }
        for _ in range(layers)
    ]
    wte = p(vocab, width)
    tree = nn.Scope(
        wte=nn.Reference("wte", wte),
        wpe=p(context, width),
        blocks=blocks,
        ln_f=norm(),
        head=nn.Reference("wte", wte),
    )

    flat = {"wte": wte.value, "wpe": tree.wpe.value}
    for i, block in enumerate(blocks):
        for name, group in block.items():
            for leaf, param in group.items():
                flat[f"h{i}.{name}.{leaf}"] = param.value
    flat.update({f"ln_f.{k}": v.value for k, v in tree.ln_f.items()})
    unique = list(flat.values())
    flat["head"] = wte.value  # the tie, as a library without ties stores it: twice
    return Data(tree, flat, unique)


def build(case: str, size: str, *, concrete: bool = True, seed: int = 0) -> Data:
    r"""Builds the data of case ``a``, ``b`` or ``c`` (case ``d`` saves case ``a``)."""

    make = _factory(concrete, seed)
    dims = SIZES[size]
    if case in ("a", "d"):
        count, rows, columns = dims["a"]
        return _many(count, (rows, columns), make)
    if case == "b":
        count, items = dims["b"]
        return _many(count, (items,), make)
    if case == "c":
        return _gpt2(*dims["c"], make)
    raise ValueError(f"unknown case {case!r}")
