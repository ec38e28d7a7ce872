r"""Tests of modules, parameters and module definitions (inox.nn.module)."""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pickle
import pytest

import inox
import inox.nn as nn


class Hyper(nn.Module):
    r"""A module with a string, an int, a list and a function as hyper-parameters."""

    def __init__(self, key, name: str = "hyper", repeat: int = 2):
        self.name = name
        self.repeat = repeat
        self.sizes = [3, 3]
        self.activation = jax.nn.relu
        self.linear = nn.Linear(3, 3, key=key)

    def __call__(self, x):
        for _ in range(self.repeat):
            x = self.activation(self.linear(x))
        return x


class Switch(nn.Module):
    def __init__(self):
        self.training = True
        self.inner = [Dropoutish(), nn.ReLU()]


class Dropoutish(nn.Module):
    def __init__(self):
        self.training = True
        self.p = 0.5


def test_hyper_parameters_are_static():
    model = Hyper(jax.random.key(0))
    leaves = jax.tree.leaves(model)
    assert len(leaves) == 2
    assert [jtu.keystr(p) for p, _ in jtu.tree_leaves_with_path(model)] == [".linear.bias.value", ".linear.weight.value"]

    out = jax.tree.map(lambda x: x * 0, model)
    assert type(out) is Hyper
    assert out.name == "hyper" and out.repeat == 2 and out.sizes == [3, 3] and out.activation is jax.nn.relu
    assert not out.linear.weight.value.any()


def test_treedefs_are_hashable_and_jit_caches():
    a, b = Hyper(jax.random.key(0)), Hyper(jax.random.key(1))
    treedef = jax.tree.structure(a)
    assert hash(treedef) == hash(jax.tree.structure(b))
    assert treedef == jax.tree.structure(b)
    assert {treedef, jax.tree.structure(b)} == {treedef}

    traces = []

    @jax.jit
    def f(model, x):
        traces.append(None)  # a Python side effect: runs once per trace
        return model(x)

    x = jnp.ones(3)
    np.testing.assert_allclose(f(a, x), a(x), rtol=1e-6)
    np.testing.assert_allclose(f(b, x), b(x), rtol=1e-6)
    f(a, x)
    assert len(traces) == 1

    # A different hyper-parameter is a different program.
    f(Hyper(jax.random.key(0), repeat=3), x)
    assert len(traces) == 2
    f(Hyper(jax.random.key(0), name="other"), x)
    assert len(traces) == 3
    assert jax.tree.structure(Hyper(jax.random.key(0), name="other")) != treedef


def test_parameter():
    p = nn.Parameter(jnp.ones((3, 5)))
    assert repr(p) == "Parameter(float32[3, 5])"
    assert p() is p.value and p.shape == (3, 5) and p.dtype == jnp.float32
    assert [jtu.keystr(k) for k, _ in jtu.tree_leaves_with_path(p)] == [".value"]
    q = jax.tree.map(lambda x: 2 * x, p)
    assert type(q) is nn.Parameter and q.value.sum() == 30


def test_complex_parameter():
    p = nn.ComplexParameter(jnp.asarray([1 + 2j, 3j]))
    assert repr(p) == "ComplexParameter(complex64[2])"
    assert p.shape == (2,) and p.dtype == jnp.complex64 and p.value.dtype == jnp.complex64
    assert p.real.dtype == p.imag.dtype == jnp.float32
    assert [jtu.keystr(k) for k, _ in jtu.tree_leaves_with_path(p)] == [".imag", ".real"]
    grad = jax.grad(lambda p: jnp.abs(p()).sum())(p)
    assert type(grad) is nn.ComplexParameter
    np.testing.assert_allclose(grad.real, [1 / 5**0.5, 0], rtol=1e-6)
    np.testing.assert_allclose(grad.imag, [2 / 5**0.5, 1], rtol=1e-6)

    # A Python number is converted, as in the original.
    assert nn.ComplexParameter(7.0 + 8.0j)() == 7 + 8j


def test_parameter_forwards_attributes_and_converts():
    p = nn.Parameter([[1.0, 2.0]])
    assert isinstance(p.value, jax.Array) and p.T.shape == (2, 1) and p.ndim == 2
    # NumPy arrays become JAX arrays, as in the original inox (float64 -> float32 without x64).
    x = nn.Parameter(np.zeros(2, np.float64)).value
    assert isinstance(x, jax.Array) and x.dtype == jnp.float32
    abstract = jax.ShapeDtypeStruct((2,), jnp.float16)
    assert nn.Parameter(abstract).value is abstract
    with pytest.raises(AttributeError):
        p.no_such_attribute
    q = pickle.loads(pickle.dumps(p))
    assert type(q) is nn.Parameter and q.shape == (1, 2)


def test_module_def():
    model = Hyper(jax.random.key(0))
    static, params, others = model.partition(nn.Parameter)
    assert list(params) == [".linear.bias.value", ".linear.weight.value"] == list(static.paths)
    assert others == {}
    assert repr(static) == "ModuleDef(2 arrays)"
    assert jax.tree.leaves(static) == []

    other_static = Hyper(jax.random.key(1)).partition(nn.Parameter)[0]
    assert static == other_static and hash(static) == hash(other_static)
    assert static != Hyper(jax.random.key(1), repeat=5).partition(nn.Parameter)[0]

    rebuilt = static(params, others)
    assert type(rebuilt) is Hyper and rebuilt.name == "hyper"
    assert rebuilt.linear.weight.value is params[".linear.weight.value"]

    # A module definition can be an argument of jit: it has no leaves.
    out = jax.jit(lambda s, p, x: s(p, {})(x))(static, params, jnp.ones(3))
    np.testing.assert_allclose(out, model(jnp.ones(3)), rtol=1e-6)

    with pytest.raises(KeyError) as info:
        static({".linear.bias.value": 0, ".linear.wieght.value": 0})
    assert info.value.args[0] == (
        'Missing key(s) in leaves: ".linear.weight.value". Unexpected key(s) in leaves: ".linear.wieght.value".'
    )


def test_module_def_is_the_originals_named_tuple():
    # The original's ModuleDef is a NamedTuple (treedef, leaves), leaves being the
    # non-array leaves by path; code written for it unpacks and rebuilds with them.
    model = Hyper(jax.random.key(0))
    static, params, others = model.partition(nn.Parameter)
    expected = {".activation": jax.nn.relu, ".name": "hyper", ".repeat": 2, ".sizes[0]": 3, ".sizes[1]": 3}
    assert static.leaves == expected and list(static.leaves) == list(expected)  # flattening order
    assert static._fields == ("treedef", "leaves") and len(static) == 2
    treedef, leaves = static
    assert treedef is static.treedef == static[0] and leaves == static[1] == static[-1] == expected
    assert static._asdict() == {"treedef": treedef, "leaves": expected}
    assert tuple(static) == static[:]

    # Rebuilding as the original's __call__ does: combine(treedef, leaves, *arrays).
    rebuilt = inox.tree.combine(treedef, leaves, params, others)
    assert type(rebuilt) is Hyper and rebuilt.sizes == [3, 3] and rebuilt.linear.weight.value is params[".linear.weight.value"]
    again = nn.ModuleDef(treedef, leaves)
    assert again == static and hash(again) == hash(static)
    assert again(params, others).name == "hyper"

    # New values for the non-array leaves, as with the original's tuple.
    renamed = nn.ModuleDef(treedef, {**leaves, ".name": "other", ".sizes[1]": 4})
    assert renamed != static and renamed.leaves[".name"] == "other"
    out = renamed(params, others)
    assert out.name == "other" and out.sizes == [3, 4] and out.repeat == 2
    assert static._replace(leaves={".repeat": 5})(params).repeat == 5
    assert static._replace(treedef=treedef) == static
    assert static(params, {".name": "at call"}).name == "at call"
    with pytest.raises(ValueError):
        static._replace(tree=treedef)
    with pytest.raises(KeyError) as info:
        nn.ModuleDef(treedef, {".nmae": "typo"})
    assert info.value.args[0] == 'Unexpected key(s) in leaves: ".nmae".'


def test_module_def_leaves_of_scopes_and_nested_modules():
    p = nn.Parameter(jnp.ones(2))
    scope = nn.Scope(a=nn.Reference("t", nn.Module(p=p, label="first")), b=None, c=[nn.ReLU(), "x"])
    scope.b = scope.a  # pruned: its leaves are listed once, under the kept occurrence
    static, arrays = scope.partition()
    assert static.leaves == {".a.value.label": "first", ".c[1]": "x"}
    out = nn.ModuleDef(static.treedef, {".a.value.label": "second"})(arrays)
    assert out.a is out.b and out.b.label == "second"


def test_partition_filters_on_modules():
    model = Hyper(jax.random.key(0))
    model.scale = jnp.ones(1)  # an array that is not a parameter
    static, params, rest = model.partition(nn.Parameter)
    assert list(rest) == [".scale"]
    static, weights, rest = model.partition(lambda x: isinstance(x, jax.Array) and x.ndim == 2)
    assert list(weights) == [".linear.weight.value"]
    assert list(rest) == [".linear.bias.value", ".scale"]
    # A module as filter: the oldest matching ancestor takes all its arrays.
    static, linears, rest = model.partition(nn.Linear)
    assert list(linears) == [".linear.bias.value", ".linear.weight.value"]
    assert static(rest, linears).scale is model.scale


def test_train_toggles_every_submodule():
    model = Switch()
    model.train(False)
    assert model.training is False and model.inner[0].training is False
    assert "training" not in vars(model.inner[1])
    model.train()
    assert model.training is True and model.inner[0].training is True
