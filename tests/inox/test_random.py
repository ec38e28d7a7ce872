r"""inox.random: the original inox's tests of PRNG, set_rng and get_rng (0.7.1's
tests/test_random.py), and the layers that draw their keys from named generators."""

import pickle

from typing import Hashable

import jax
import jax.numpy as jnp
import pytest

import inox.nn as nn

from inox.errors import UsageError
from inox.random import PRNG, get_rng, set_rng


def data(key):
    # Typed keys (jax.random.key) and raw ones (jax.random.PRNGKey), as numbers.
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


@pytest.mark.parametrize("seed", [0, jax.random.key(0)])
def test_prng(seed):
    rng = PRNG(seed)
    shape = rng.state.shape

    assert rng.split().shape == shape
    assert rng.split(3).shape == (3, *shape)
    assert not jnp.array_equal(data(rng.split()), data(rng.split()))
    assert not jnp.allclose(rng.normal(), rng.normal())
    assert rng.normal().shape == () and rng.uniform(shape=(2, 3)).shape == (2, 3)

    # A state made outside of jit cannot be split inside: its keys would repeat.
    with pytest.raises(AssertionError, match="different JIT traces"):
        jax.jit(lambda: rng.split())()

    leaves, treedef = jax.tree_util.tree_flatten(rng)
    assert isinstance(treedef, Hashable)
    copy = jax.tree_util.tree_unflatten(treedef, leaves)
    assert jnp.array_equal(data(copy.state), data(rng.state))

    again = pickle.loads(pickle.dumps(rng))
    assert jnp.array_equal(data(again.split()), data(rng.split()))
    assert repr(rng).startswith("PRNG(\n  state = ")


def test_prng_values_are_the_original_ones():
    rng = PRNG(42)
    assert rng.split().tolist() == [1832780943, 270669613]  # the original's docstring
    assert PRNG(0).split(3).shape == (3, 2)


def test_prng_inside_jit():
    keys = jax.jit(lambda k: PRNG(k).split(2))(jax.random.PRNGKey(1))
    assert keys.shape == (2, 2)


@pytest.mark.parametrize("seed", [0, jax.random.key(0)])
def test_set_rng(seed):
    with set_rng(init=PRNG(seed), dropout=PRNG(seed)):
        a = get_rng("init").split()
        b = get_rng("dropout").split()
        assert jnp.array_equal(data(a), data(b))

    with pytest.raises(AssertionError, match="no RNG state with name 'init' is set in this context."):
        get_rng("init")
    with pytest.raises(UsageError):
        get_rng("init")


def test_set_rng_nests_and_restores():
    outer, inner = PRNG(1), PRNG(2)
    with set_rng(init=outer):
        with set_rng(init=inner):
            assert get_rng("init") is inner
        assert get_rng("init") is outer
        with pytest.raises(RuntimeError):
            with set_rng(init=inner):
                raise RuntimeError
        assert get_rng("init") is outer


def test_layers_draw_keys_from_named_generators():
    with set_rng(init=PRNG(0)):
        a = nn.Linear(3, 4)
        cell = nn.LSTMCell(3, 4)
        ssm = nn.S4(4)
    with set_rng(init=PRNG(0)):
        b = nn.Linear(3, 4)
    assert jnp.array_equal(a.weight(), b.weight())
    assert cell.lin_x.weight.shape == (3, 16) and ssm.B.shape == (4,)
    with pytest.raises(AssertionError):
        nn.Conv(3, 4, [3])  # no key and no generator

    dropout = nn.TrainingDropout(0.5)
    with set_rng(dropout=PRNG(3)):
        y = dropout(jnp.ones(100))
    assert jnp.array_equal(y, nn.Dropout(0.5)(jnp.ones(100), PRNG(3).split()))
