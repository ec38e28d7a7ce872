r"""inox.api (and inox.lift, its 0.8 name): the original inox's tests of inner, outer
and automask (0.7.1's tests/test_api.py), and each lifted transformation on trees with
non-array leaves."""

from functools import partial

import jax
import jax.numpy as jnp
import pytest

import inox
import inox.nn as nn

from inox.api import automask, inner, outer
from inox.tree import Mask, Static


def is_static(x):
    assert type(x) is Static
    return x


def is_masked(x):
    assert type(x) is Mask
    return x


def is_not_masked(x):
    assert type(x) is not Mask
    return x


def test_inner_and_outer():
    assert is_masked(inner(is_not_masked)("leaf"))
    assert is_masked(inner(is_not_masked)(Mask("leaf")))
    assert is_static(inner(is_static)(Static("leaf")))
    assert is_not_masked(outer(is_masked)("leaf"))
    assert is_not_masked(outer(is_masked)(Mask("leaf")))
    assert is_static(outer(is_static)(Static("leaf")))

    def f(x):
        return x

    assert outer(inner(f)) is f
    assert inner(outer(f)) is f
    assert inner(f) is inner(f)  # so that jax.jit caches by function


def test_automask():
    def f(x):
        return x

    assert is_not_masked(automask(partial)(is_not_masked)("leaf"))
    assert is_not_masked(automask(partial)(is_not_masked)(Mask("leaf")))
    assert is_static(automask(partial)(is_static)(Static("leaf")))
    assert automask(lambda f: f)(f) is f
    assert automask(partial)(f) is not f


def test_names():
    names = ["automask", "jit", "grad", "value_and_grad", "jacfwd", "jacrev", "hessian", "checkpoint", "vmap", "pmap"]
    assert inox.api.__all__ == names
    assert sorted(inox.lift.__all__) == sorted(names + ["inner", "outer"])
    for name in names:
        assert getattr(inox, name) is getattr(inox.api, name) is getattr(inox.lift, name)


TREE = {"x": jnp.asarray([1.0, 2.0]), "power": 2, "name": "square"}


def square(tree):
    assert tree["name"] == "square"  # strings and ints are Python values inside
    return jnp.sum(tree["x"] ** tree["power"])


def test_jit_takes_non_array_leaves_as_static():
    traces = []

    @inox.jit
    def f(tree):
        traces.append(1)
        return square(tree), tree["name"]

    assert f(TREE) == (5.0, "square")
    f({**TREE, "x": jnp.zeros(2)})
    assert len(traces) == 1  # same statics: no new trace
    assert f({**TREE, "power": 3})[0] == 9.0 and len(traces) == 2
    with pytest.raises(TypeError):
        jax.jit(square)(TREE)  # plain JAX cannot trace the string


def test_differentiation():
    grads = inox.grad(square)(TREE)
    assert grads["name"] == "square" and grads["power"] == 2
    assert jnp.allclose(grads["x"], 2 * TREE["x"])
    value, grads = inox.value_and_grad(square)(TREE)
    assert value == 5.0 and jnp.allclose(grads["x"], 2 * TREE["x"])
    assert jnp.allclose(inox.jacfwd(square)(TREE)["x"], 2 * TREE["x"])
    assert jnp.allclose(inox.jacrev(square)(TREE)["x"], 2 * TREE["x"])
    assert jnp.allclose(inox.hessian(square)(TREE)["x"]["x"], 2 * jnp.eye(2))
    assert jnp.allclose(inox.grad(inox.checkpoint(square))(TREE)["x"], 2 * TREE["x"])


def test_vmap_and_pmap():
    ys, name = inox.vmap(lambda x, name: (x * 2, name))(jnp.ones(3), "double")
    assert ys.shape == (3,) and name == "double"
    devices = jax.local_device_count()
    ys, name = inox.pmap(lambda x, name: (x + 1, name))(jnp.zeros(devices), "plus")
    assert ys.tolist() == [1.0] * devices and name == "plus"


def test_modules_through_both_ways():
    # Ours hide their non-array leaves already: the plain and the lifted jit agree.
    model = nn.Sequential(nn.Linear(3, 4, key=jax.random.key(0)), nn.Rearrange("B C -> C B"))
    x = jnp.ones((2, 3))
    assert jnp.allclose(inox.jit(lambda m, x: m(x))(model, x), jax.jit(lambda m, x: m(x))(model, x))
