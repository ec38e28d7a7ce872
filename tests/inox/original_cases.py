r"""Layer cases run by both this inox and the original one (inox 0.8.0, from the package
registry), with the same keys and inputs: ``fixtures/original_outputs.json`` holds what
the original gave (written by ``fixtures/record_original.py``), and
``test_layers_original.py`` checks that ours gives the same.

Only names and calls that both packages share are used here, so that the same file
runs against either; it imports neither (``nn`` and ``export_state`` are passed in).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp

Case = Callable[[Any], Tuple[Any, Any]]  # nn -> (layer, output)

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(1), (4, 6))
IMAGES = jax.random.normal(jax.random.key(2), (2, 5, 4, 4))
SEQUENCE = jax.random.normal(jax.random.key(4), (7, 3))
SIGNAL = jnp.linspace(0.0, 1.0, 32)
TOKENS = jax.random.normal(jax.random.key(5), (2, 5, 8))

ACTIVATIONS = ["Identity", "Tanh", "Sigmoid", "SiLU", "Softplus", "Softmax", "ReLU", "LeakyReLU", "ELU", "CELU", "GELU", "SELU"]


def _activation(name: str) -> Case:
    def case(nn):
        layer = getattr(nn, name)()
        return layer, layer(X)

    return case


def _call(make: Callable[[Any], Any], *args: Any, **kwargs: Any) -> Case:
    def case(nn):
        layer = make(nn)
        return layer, layer(*args, **kwargs)

    return case


def _cell(make: Callable[[Any], Any]) -> Case:
    def case(nn):
        cell = make(nn)
        return cell, (cell.init(), cell(cell.init(), SEQUENCE[0]))

    return case


def _s4(nn):
    layer = nn.S4(8, key=KEY)
    return layer, (layer(SIGNAL), layer.kernel(10))


def _batch_norm(nn):
    layer, state = nn.export_state(nn.BatchNorm(6, 1e-3, 0.5))
    y, state = layer(X, state)
    layer.train(False)
    z, _ = layer(X[0], state)
    return layer, (y, state, z)


def _masked_attention(nn):
    layer = nn.MultiheadAttention(in_features=8, heads=2, key=KEY)
    mask = jnp.tril(jnp.ones((2, 5, 5), bool))
    return layer, (layer(TOKENS, TOKENS, TOKENS, mask=mask), layer(TOKENS, TOKENS[:, :3], TOKENS[:, :3]))


CASES: Dict[str, Case] = {
    **{name: _activation(name) for name in ACTIVATIONS},
    "LeakyReLU(0.2)": _call(lambda nn: nn.LeakyReLU(0.2), X),
    "GELU(False)": _call(lambda nn: nn.GELU(False), X),
    "Softmax(0)": _call(lambda nn: nn.Softmax(0), X),
    "Linear": _call(lambda nn: nn.Linear(6, 3, key=KEY), X),
    "Linear(bias=False)": _call(lambda nn: nn.Linear(6, 3, False, key=KEY), X),
    "Conv": _call(lambda nn: nn.Conv(4, 6, [3, 3], stride=2, padding=1, key=KEY), IMAGES),
    "Conv(dilation, groups)": _call(
        lambda nn: nn.Conv(4, 6, [3, 2], dilation=2, groups=2, padding=[(1, 0), (0, 2)], key=KEY), IMAGES
    ),
    "Conv 1-d unbatched": _call(lambda nn: nn.Conv(4, 2, [3], key=KEY), IMAGES[0, 0]),
    "ConvTransposed": _call(lambda nn: nn.ConvTransposed(4, 6, [3, 3], stride=2, padding=1, key=KEY), IMAGES),
    "ConvTransposed(dilation, groups)": _call(
        lambda nn: nn.ConvTransposed(4, 6, [3, 2], dilation=2, stride=[2, 1], groups=2, padding=[(1, 0), (0, 2)], key=KEY),
        IMAGES,
    ),
    "Dropout": _call(lambda nn: nn.Dropout(0.3), X, jax.random.key(3)),
    "TrainingDropout": _call(lambda nn: nn.TrainingDropout(0.3), X, jax.random.key(3)),
    "Rearrange": _call(lambda nn: nn.Rearrange("A (B C) -> C A B", B=2), X),
    "Reduce": _call(lambda nn: nn.Reduce("A B -> B", "max"), X),
    "Repeat": _call(lambda nn: nn.Repeat("A B -> A B R", R=2), X),
    "Resample": _call(lambda nn: nn.Resample([2.0, 0.5], method="linear"), IMAGES),
    "Pad": _call(lambda nn: nn.Pad([(1, 2)], value=3.0), IMAGES),
    "AvgPool": _call(lambda nn: nn.AvgPool([2, 2]), IMAGES),
    "AvgPool(stride, padding)": _call(lambda nn: nn.AvgPool([3, 2], stride=1, padding=1), IMAGES),
    "MaxPool": _call(lambda nn: nn.MaxPool([2, 3], stride=[1, 2], padding=[(1, 0), (0, 1)]), IMAGES),
    "GRUCell": _cell(lambda nn: nn.GRUCell(3, 5, key=KEY)),
    "LSTMCell": _cell(lambda nn: nn.LSTMCell(3, 5, key=KEY)),
    "Recurrent(GRUCell)": _call(lambda nn: nn.Recurrent(nn.GRUCell(3, 5, key=KEY)), SEQUENCE),
    "Recurrent(LSTMCell, reverse)": _call(lambda nn: nn.Recurrent(nn.LSTMCell(3, 5, False, key=KEY), reverse=True), SEQUENCE),
    "S4": _s4,
    "LayerNorm": _call(lambda nn: nn.LayerNorm(), X),
    "LayerNorm(axes, epsilon)": _call(lambda nn: nn.LayerNorm((0, 1), 1e-3), X),
    "GroupNorm": _call(lambda nn: nn.GroupNorm(2), X),
    "BatchNorm": _batch_norm,
    "MultiheadAttention": _call(lambda nn: nn.MultiheadAttention(in_features=8, heads=2, key=KEY), TOKENS),
    "MultiheadAttention(causal)": _call(
        lambda nn: nn.MultiheadAttention(in_features=8, out_features=4, hid_features=16, heads=4, causal=True, dropout=0.1, key=KEY),
        TOKENS,
    ),
    "MultiheadAttention(mask)": _masked_attention,
    "Sequential": _call(lambda nn: nn.Sequential(nn.Linear(6, 3, key=KEY), nn.ReLU(), nn.Linear(3, 2, key=KEY)), X),
}


def record(nn) -> Dict[str, Any]:
    r"""Runs every case: its parameters' paths, shapes and dtypes, and its outputs as
    (shape, dtype, values) triples, complex values as [real, imag] pairs."""

    def array(x: Any) -> Any:
        x = jnp.asarray(x)
        parts = [jnp.real(x), jnp.imag(x)] if jnp.iscomplexobj(x) else [x]
        # Six decimals: the tests compare to 1e-5, and the file stays small.
        values = [jnp.round(part, 6).tolist() for part in parts]
        return {"shape": list(x.shape), "dtype": str(x.dtype), "values": values}

    results = {}
    for name, case in CASES.items():
        layer, output = case(nn)
        _, arrays = layer.partition()
        results[name] = {
            "arrays": {path: [list(a.shape), str(a.dtype)] for path, a in arrays.items()},
            "output": [array(leaf) for leaf in jax.tree.leaves(output)],
        }
    return results
