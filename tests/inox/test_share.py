r"""Tests of shared references (inox.nn.share), against the spec of inox.nn.share."""

import copy
import pathlib
import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest

import inox
import inox.nn as nn
from inox.tree import find_duplicates, prepr

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The spec's model lives in tests/inox_io/models.py, shared with the inox_io tests.
sys.path.insert(0, str(ROOT / "tests" / "inox_io"))
from models import WeightSharingMLP, assert_tied  # noqa: E402

# The block printed by the seed example of the spec, character for character.
SEED_OUTPUT = """{
  '.l1.value.bias.value': float32[64],
  '.l1.value.weight.value': float32[64, 64],
  '.l3.bias.value': float32[64],
  '.l3.weight.value.value': float32[64, 64],
  '.l4.bias.value': float32[64]
}
"""


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


class UntiedMLP(nn.Module):
    r"""The same network, with four independent layers."""

    def __init__(self, tied: WeightSharingMLP):
        # Deep copies: equal values, but no shared object anywhere.
        self.l1 = copy.deepcopy(tied.l1.obj)
        self.l2 = copy.deepcopy(tied.l1.obj)
        self.l3 = nn.Linear(1, 1, key=jax.random.key(0))
        self.l3.weight = copy.deepcopy(tied.l3.weight.obj)
        self.l3.bias = copy.deepcopy(tied.l3.bias)
        self.l4 = nn.Linear(1, 1, key=jax.random.key(0))
        self.l4.weight = copy.deepcopy(tied.l3.weight.obj)
        self.l4.bias = copy.deepcopy(tied.l4.bias)
        self.relu = nn.ReLU()

    __call__ = WeightSharingMLP.__call__


class Block(nn.Module):
    def __init__(self):
        self.w = nn.Parameter(jnp.arange(2.0))


class CyclicNet(nn.Scope):
    r"""A block holding a reference back to itself, through the scope's tag."""

    def __init__(self):
        block = Block()
        self.block = nn.Reference("block", block)
        block.me = self.block


@pytest.fixture(scope="module")
def model():
    return WeightSharingMLP(jax.random.key(0), features=8)


def is_tied(m) -> bool:
    r"""Both ties, as a value: for checks inside traced functions."""

    return m.l1 is m.l2 and m.l3.weight is m.l4.weight


# The spec's examples


def test_seed_example_prints_the_spec_block():
    result = run_python("examples/seed_sharing.py")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == SEED_OUTPUT


def test_reference_docstring_example():
    dummy = ["zero", nn.Parameter(jax.numpy.ones((2, 3)))]
    dummy = nn.Reference("dummy-list", dummy)
    assert repr(dummy) == "*['zero', Parameter(float32[2, 3])]"
    assert len(dummy) == 2
    assert "zero" in dummy
    assert "one" not in dummy
    assert dummy[1].shape == (2, 3)
    assert list(dummy)[0] == "zero"


def test_reference_forwarding():
    layer = nn.Linear(2, 3, key=jax.random.key(0))
    ref = nn.Reference(("layer", 0), layer)
    assert ref.value is ref.obj is layer
    assert ref.tag == ("layer", 0)
    np.testing.assert_array_equal(ref(jnp.ones(2)), layer(jnp.ones(2)))
    assert ref.weight is layer.weight

    # Setting and deleting forward too, except for the reference's own attributes.
    new_bias = nn.Parameter(jnp.ones(3))
    ref.bias = new_bias
    assert layer.bias is new_bias
    other = nn.Linear(2, 3, key=jax.random.key(1))
    ref.value = other
    assert ref.obj is other and ref.value is other and layer.bias is new_bias

    d = nn.Reference("d", {"a": 1})
    d["b"] = 2
    del d["a"]
    assert d.obj == {"b": 2}

    # Arithmetic is not forwarded: use ref.obj.
    with pytest.raises(TypeError):
        nn.Reference("x", jnp.ones(2)) + 1

    with pytest.raises(TypeError, match="hashable"):
        nn.Reference(["unhashable"], 0)


def test_printed_paths_are_attribute_chains(model):
    static, params, others = model.partition(nn.Parameter)
    assert model.l3.weight.value.value is params[".l3.weight.value.value"]
    assert model.l3.weight.value is model.l3.weight.obj
    assert model.l1.value is model.l1.obj
    for key, leaf in {**params, **others}.items():
        assert eval("m" + key, {"m": model}) is leaf, key
    # The pruned aliases lead to the same arrays.
    assert model.l4.weight.value.value is params[".l3.weight.value.value"]
    assert model.l2.value.weight.value is params[".l1.value.weight.value"]


def test_seed_model_repr(model):
    assert repr(model) == (
        "WeightSharingMLP(\n"
        "  l1 = *Linear(\n"
        "    bias = Parameter(float32[8]),\n"
        "    weight = Parameter(float32[8, 8])\n"
        "  ),\n"
        "  l2 = *Linear(\n"
        "    bias = Parameter(float32[8]),\n"
        "    weight = Parameter(float32[8, 8])\n"
        "  ),\n"
        "  l3 = Linear(\n"
        "    bias = Parameter(float32[8]),\n"
        "    weight = *Parameter(float32[8, 8])\n"
        "  ),\n"
        "  l4 = Linear(\n"
        "    bias = Parameter(float32[8]),\n"
        "    weight = *Parameter(float32[8, 8])\n"
        "  ),\n"
        "  relu = ReLU()\n"
        ")"
    )


def test_flattening_prunes_aliases(model):
    paths = [jtu.keystr(p) for p, _ in jtu.tree_leaves_with_path(model)]
    assert paths == [
        ".l1.value.bias.value",
        ".l1.value.weight.value",
        ".l3.bias.value",
        ".l3.weight.value.value",
        ".l4.bias.value",
    ]
    assert find_duplicates(model) == [[".l1", ".l2"], [".l3.weight", ".l4.weight"]]
    assert nn.ties(model) == [
        nn.Tie("", "l1", ".l1", [".l2"]),
        nn.Tie("", "l3.weight", ".l3.weight", [".l4.weight"]),
    ]


# Identity through transformations


def _map(m):
    return jax.tree.map(lambda x: x + 1, m)


def _jit_argument(m):
    seen = []

    @jax.jit
    def f(m):
        seen.append(is_tied(m))
        return m(jnp.ones(8))

    f(m)
    assert seen == [True]
    return _map(m)


def _jit_return(m):
    return jax.jit(lambda m: jax.tree.map(lambda x: 2 * x, m))(m)


def _jit_built_inside(m):
    return jax.jit(lambda key: WeightSharingMLP(key, features=8))(jax.random.key(1))


def _grad(m):
    seen = []

    def loss(m):
        seen.append(is_tied(m))
        return jnp.sum(m(jnp.ones(8)) ** 2)

    grads = jax.grad(loss)(m)
    assert seen == [True]
    return grads


def _vmap_none(m):
    seen = []

    def f(m, x):
        seen.append(is_tied(m))
        return m(x), m

    y, out = jax.vmap(f, in_axes=(None, 0), out_axes=(0, None))(m, jnp.ones((3, 8)))
    assert seen == [True] and y.shape == (3, 8)
    return out


def _module_def(m):
    static, params, others = m.partition(nn.Parameter)
    return static(params, others)


def _pickle(m):
    return pickle.loads(pickle.dumps(m))


TRANSFORMS = {
    "tree.map": _map,
    "jit-argument": _jit_argument,
    "jit-return": _jit_return,
    "jit-built-inside": _jit_built_inside,
    "grad": _grad,
    "vmap-in_axes-None": _vmap_none,
    "ModuleDef": _module_def,
    "pickle": _pickle,
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_identity_is_kept(model, transform):
    out = transform(model)
    assert type(out) is WeightSharingMLP
    assert_tied(out)
    assert out.l1 is not model.l1 and out.l3.weight is not model.l3.weight
    assert len(jax.tree.leaves(out)) == 5
    # The original is untouched.
    assert_tied(model)


def test_identity_through_vmap_over_stacked_models():
    models = [WeightSharingMLP(jax.random.key(i), features=8) for i in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *models)
    assert_tied(stacked)
    assert stacked.l3.weight.value.value.shape == (3, 8, 8)

    seen = []

    def f(m, x):
        seen.append(is_tied(m))
        return m(x), jax.tree.map(lambda w: -w, m)

    x = jax.random.normal(jax.random.key(5), (3, 8))
    y, negated = jax.vmap(f)(stacked, x)
    assert seen == [True]
    assert_tied(negated)
    for i, m in enumerate(models):
        np.testing.assert_allclose(y[i], m(x[i]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(negated.l4.weight.value.value, -stacked.l3.weight.value.value)


def test_module_def_roundtrip(model):
    static, params, others = model.partition(nn.Parameter)
    assert list(params) == list(static.paths)
    assert others == {}
    assert hash(static) == hash(WeightSharingMLP(jax.random.key(3), features=8).partition(nn.Parameter)[0])

    params = jax.tree.map(jnp.zeros_like, params)
    rebuilt = static(params, others)
    assert_tied(rebuilt)
    assert not rebuilt.l4.weight.value.value.any()

    with pytest.raises(KeyError) as info:
        static({k: v for k, v in params.items() if k != ".l3.weight.value.value"}, {".l4.weight.value.value": 0})
    assert ".l3.weight.value.value" in info.value.args[0]
    assert ".l4.weight.value.value" in info.value.args[0]


# Scopes


def test_nested_scopes_have_their_own_tags():
    p_outer = nn.Parameter(jnp.ones(1))
    p_inner = nn.Parameter(jnp.zeros(1))
    inner = nn.Scope(x=nn.Reference("t", p_inner), y=nn.Reference("t", p_inner))
    outer = nn.Scope(a=nn.Reference("t", p_outer), b=nn.Reference("t", p_outer), inner=inner)

    # Same tag, different objects, different scopes: no conflict, both kept.
    assert [jtu.keystr(p) for p, _ in jtu.tree_leaves_with_path(outer)] == [".a.value.value", ".inner.x.value.value"]
    assert nn.ties(outer) == [
        nn.Tie("", "t", ".a", [".b"]),
        nn.Tie(".inner", "t", ".inner.x", [".inner.y"]),
    ]

    out = jax.jit(lambda o: o)(outer)
    assert out.a is out.b
    assert out.inner.x is out.inner.y
    assert out.a is not out.inner.x
    assert out.a.value.value[0] == 1 and out.inner.x.value.value[0] == 0


def test_cycles_keep_identity():
    net = CyclicNet()
    assert net.block.me is net.block
    leaves = jax.tree.leaves(net)
    assert len(leaves) == 1 and leaves[0] is net.block.w.value
    assert [jtu.keystr(p) for p, _ in jtu.tree_leaves_with_path(net)] == [".block.value.w.value"]
    assert find_duplicates(net) == [[".block", ".block.value.me"]]
    assert nn.ties(net) == [nn.Tie("", "block", ".block", [".block.value.me"])]
    assert repr(net) == "CyclicNet(\n  block = *Block(\n    me = Reference(...),\n    w = Parameter(float32[2])\n  )\n)"

    static, params, others = net.partition(nn.Parameter)
    outs = [
        jax.tree.map(lambda x: x + 1, net),
        jax.jit(lambda n: n)(net),
        static(params, others),
        pickle.loads(pickle.dumps(net)),
        copy.deepcopy(net),
    ]
    for out in outs:
        assert out.block is not net.block
        assert out.block.me is out.block
        assert out.block.value.me.value is out.block.value
    np.testing.assert_array_equal(outs[0].block.me.me.w.value, jnp.arange(2.0) + 1)


def test_scope_referencing_itself_raises():
    scope = nn.Scope(w=jnp.ones(1))
    scope.me = nn.Reference("me", scope)
    with pytest.raises(ValueError, match=r"references itself at \.me \(tag 'me'\)"):
        jax.tree.leaves(scope)


def test_scope_containing_itself_raises():
    # Run apart: without the check, JAX would recurse forever and leave the interpreter
    # unusable. Run with -O too: the checks must be real raises, not assertions.
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        import inox.nn as nn

        def check(build):
            scope = nn.Scope(w=jnp.ones(1))
            build(scope)
            try:
                jax.tree.leaves(scope)
            except ValueError as e:
                print(e)
            else:
                print('no error')

        check(lambda s: setattr(s, 'me', nn.Reference('me', s)))
        check(lambda s: setattr(s, 'r', nn.Reference('r', [s])))
        check(lambda s: setattr(s, 'me', s))
        p, q = nn.Parameter(jnp.ones(1)), nn.Parameter(jnp.ones(1))
        check(lambda s: setattr(s, 'x', [nn.Reference('t', p), nn.Module(y=nn.Reference('t', q))]))
        """
    )
    result = run_python("-O", "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "the scope references itself at .me (tag 'me')",
        "the scope contains itself at .r.value[0]",
        "the scope contains itself at .me",
        "tag 't' refers to two different objects, at .x[0] and .x[1].y",
    ]


def test_conflicting_tag_raises():
    p, q = nn.Parameter(jnp.ones(2)), nn.Parameter(jnp.ones(2))
    scope = nn.Scope(a=nn.Reference("w", p), b={"c": [nn.Reference("w", q)]})
    for flatten in (jax.tree.leaves, lambda s: jax.jit(lambda s: s)(s), lambda s: s.partition(nn.Parameter)):
        with pytest.raises(ValueError) as info:
            flatten(scope)
        message = str(info.value)
        assert "'w'" in message
        assert ".a" in message and ".b['c'][0]" in message
        assert message == "tag 'w' refers to two different objects, at .a and .b['c'][0]"

    # Equal values are not enough: the same object is.
    scope = nn.Scope(a=nn.Reference(1, jnp.ones(1)), b=nn.Reference(1, jnp.ones(1)))
    with pytest.raises(ValueError, match="tag 1 refers to two different objects, at .a and .b"):
        jax.tree.leaves(scope)


def test_pruned_reference_outside_its_scope_raises():
    scope = nn.Scope(a=nn.Reference._pruned("t"))
    with pytest.raises(ValueError, match="pruned reference 't'"):
        jax.tree.leaves(scope)
    assert repr(nn.Reference._pruned("t")) == "#t"
    with pytest.raises(AttributeError, match="pruned"):
        nn.Reference._pruned("t").weight


def test_first_occurrence_in_sorted_order_is_kept():
    p = nn.Parameter(jnp.ones(1))
    scope = nn.Scope()
    scope.z = nn.Reference("p", p)  # set first, but flattened last
    scope.a = [scope.z]
    assert [jtu.keystr(k) for k, _ in jtu.tree_leaves_with_path(scope)] == [".a[0].value.value"]
    assert nn.ties(scope) == [nn.Tie("", "p", ".a[0]", [".z"])]
    assert find_duplicates(scope) == [[".a[0]", ".z"]]
    out = jax.tree.map(lambda x: x, scope)
    assert out.z is out.a[0]


def test_references_outside_scopes_are_not_shared():
    # Only a scope handles references: elsewhere, JAX duplicates them like any node.
    p = nn.Parameter(jnp.ones(1))
    ref = nn.Reference("p", p)
    tree = jax.tree.map(lambda x: x, {"a": ref, "b": ref})
    assert len(jax.tree.leaves({"a": ref, "b": ref})) == 2
    assert tree["a"] is not tree["b"]
    assert nn.ties({"a": ref, "b": ref}) == []


# Training a tied model


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def test_tied_gradient_is_the_sum_of_both_uses():
    tied = WeightSharingMLP(jax.random.key(0), features=8)
    untied = UntiedMLP(tied)
    assert find_duplicates(untied) == []
    x = jax.random.normal(jax.random.key(1), (4, 8))
    y = jax.random.normal(jax.random.key(2), (4, 8))
    np.testing.assert_allclose(tied(x), untied(x), rtol=1e-6)

    static_t, params_t, others_t = tied.partition(nn.Parameter)
    static_u, params_u, others_u = untied.partition(nn.Parameter)
    assert len(params_t) == 5 and len(params_u) == 8

    g_t = jax.grad(lambda p: loss_fn(static_t(p, others_t), x, y))(params_t)
    g_u = jax.grad(lambda p: loss_fn(static_u(p, others_u), x, y))(params_u)

    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for name in ("weight", "bias"):
        use1, use2 = g_u[f".l1.{name}.value"], g_u[f".l2.{name}.value"]
        assert not np.allclose(use1, use2)  # two genuinely different contributions
        close(g_t[f".l1.value.{name}.value"], use1 + use2)
    use1, use2 = g_u[".l3.weight.value"], g_u[".l4.weight.value"]
    assert not np.allclose(use1, use2)
    close(g_t[".l3.weight.value.value"], use1 + use2)
    close(g_t[".l3.bias.value"], g_u[".l3.bias.value"])
    close(g_t[".l4.bias.value"], g_u[".l4.bias.value"])

    # Differentiating the model itself gives a tied gradient, with the same sums.
    g_m = jax.grad(loss_fn)(tied, x, y)
    assert_tied(g_m)
    close(g_m.l4.weight.value.value, use1 + use2)


@pytest.mark.parametrize("optimizer", [optax.sgd(0.1), optax.adam(1e-2)], ids=["sgd", "adam"])
def test_training_keeps_the_tie(optimizer):
    model = WeightSharingMLP(jax.random.key(0), features=8)
    static, params, others = model.partition(nn.Parameter)
    initial = dict(params)
    x = jax.random.normal(jax.random.key(1), (16, 8))
    y = jnp.sin(x)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(static(p, others), x, y))(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(5):
        params, state, loss = step(params, state)
        losses.append(float(loss))
        assert sorted(params) == sorted(initial)  # no 'l2' nor 'l4.weight'
        assert_tied(static(params, others))

    assert losses[-1] < losses[0]
    model = static(params, others)
    assert not np.allclose(model.l4.weight.value.value, initial[".l3.weight.value.value"])
    assert model.l4.weight.value.value is params[".l3.weight.value.value"]
    assert model.l2.value.bias.value is params[".l1.value.bias.value"]


def test_reference_takes_the_07_keyword_value():
    # inox 0.7 named the second argument `value`; 0.8 and the specification, `obj`.
    p = nn.Parameter(jnp.ones(2))
    for ref in (nn.Reference("w", value=p), nn.Reference("w", obj=p), nn.Reference("w", p), nn.Reference(tag="w", value=p)):
        assert ref.obj is ref.value is p and ref.tag == "w"
        assert repr(ref) == "*Parameter(float32[2])"  # the specification's repr, not 0.7's &
    assert nn.Reference("none", value=None).obj is None
    with pytest.raises(TypeError, match="both 'obj' and 'value'"):
        nn.Reference("w", p, value=p)
    with pytest.raises(TypeError, match="missing"):
        nn.Reference("w")
    # Tied through a scope, as with the positional form.
    scope = nn.Scope(a=nn.Reference("t", value=p))
    scope.b = nn.Reference("t", value=p)
    assert len(jax.tree.leaves(scope)) == 1
    out = jax.tree.map(lambda x: x + 1, scope)
    assert out.a is out.b
