r"""The original inox's tests of inox.tree (0.7.1's tests/test_tree.py), for ours, and
the original's representation hook, tree_repr, as subclasses written for it use it."""

import copy
import pickle
import warnings

from typing import Hashable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import pytest

import inox.nn as nn

from jax import Array
from inox.errors import RecompilationWarning
from inox.tree import Mask, Namespace, Static, combine, mask, mask_static, partition, prepr, unmask_static


def tree_eq(x, y):
    def eq(a, b):
        if isinstance(a, Array) and isinstance(b, Array):
            return bool(jnp.allclose(a, b))
        if isinstance(a, Array) or isinstance(b, Array):
            return False
        return a == b

    return jtu.tree_structure(x) == jtu.tree_structure(y) and jtu.tree_all(jtu.tree_map(eq, x, y))


def test_namespace():
    x = Namespace(a=1, b="2")
    assert (x.a, x.b) == (1, "2")
    x.c = True
    assert x.c is True
    x.a = Namespace(d=None)
    assert x.a.d is None
    del x.b
    assert not hasattr(x, "b")

    leaves, treedef = jtu.tree_flatten(x)
    assert isinstance(treedef, Hashable)
    assert tree_eq(x, jtu.tree_unflatten(treedef, leaves))
    assert tree_eq(x, pickle.loads(pickle.dumps(x)))
    assert repr(x) == "Namespace(\n  a = Namespace(\n    d = None\n  ),\n  c = True\n)"


@pytest.mark.parametrize("nested", [False, True])
def test_static(nested):
    x = Static(Static("hashable")) if nested else Static("hashable")
    leaves, treedef = jtu.tree_flatten(x)
    assert not leaves and isinstance(treedef, Hashable)
    assert jtu.tree_unflatten(treedef, leaves) == x
    assert pickle.loads(pickle.dumps(x)) == x
    assert repr(x) == ("Static(Static('hashable'))" if nested else "Static('hashable')")


def test_mask_static():
    x = Namespace(a=jnp.ones(1), b=2, c=[jnp.arange(3), False], d=Namespace(e="five", f=jnp.eye(6)))

    y = mask_static(x)
    leaves, treedef = jtu.tree_flatten(y)
    assert all(isinstance(leaf, Array) for leaf in leaves) and isinstance(treedef, Hashable)
    assert jtu.tree_structure(y) == jtu.tree_structure(mask_static(y))
    assert repr(y.c) == "[Array([0, 1, 2], dtype=int32), Mask(False)]"

    z = unmask_static(y)
    assert not all(isinstance(leaf, Array) for leaf in jtu.tree_leaves(z))
    assert tree_eq(x, z)
    # Only Mask is undone: a Static set by hand stays.
    assert unmask_static([Mask(1), Static(2)]) == [1, Static(2)]
    assert mask_static([1, "a"], lambda leaf: isinstance(leaf, int)) == [Mask(1), "a"]


def test_partition():
    x = Namespace(a=jnp.ones(1), b=2, c=[jnp.arange(3), False], d=Namespace(e="five", f=jnp.eye(6)))

    treedef_a, leaves = partition(x)
    assert not all(isinstance(leaf, Array) for leaf in leaves.values())
    treedef_b, arrays, others = partition(x, Array)
    assert all(isinstance(leaf, Array) for leaf in arrays.values())
    assert not any(isinstance(leaf, Array) for leaf in others.values())
    assert treedef_a == treedef_b and isinstance(treedef_a, Hashable)

    assert tree_eq(x, combine(treedef_a, leaves))
    assert tree_eq(x, combine(treedef_b, arrays, others))
    with pytest.raises(KeyError):
        combine(treedef_a, {})
    with pytest.raises(KeyError):
        combine(treedef_a, leaves, {"none": None})


def test_tree_repr_hook():
    class Boxed(nn.Module):
        def tree_repr(self, **kwargs):
            return "[" + super().tree_repr(**kwargs) + "]"

    box = Boxed(w=jnp.zeros(2))
    assert repr(box) == "[Boxed(\n  w = float32[2]\n)]"
    assert prepr({"box": box}) == "{\n  'box': [Boxed(\n    w = float32[2]\n  )]\n}"
    # The original's keyword arguments reach the hook.
    assert Boxed(w=jnp.zeros(2)).tree_repr(typeonly=False) == "[Boxed(\n  w = Array([0., 0.], dtype=float32)\n)]"
    box.me = box  # a cycle through the hook is shown, not followed
    assert "me = Boxed(...)" in repr(box)
    assert Static(3).tree_repr() == "Static(3)" and nn.Parameter(jnp.ones(1)).tree_repr() == "Parameter(float32[1])"


def test_treedefs_of_masks_tell_types_apart():
    assert jax.tree.structure(mask_static(1)) != jax.tree.structure(mask_static(1.0))
    assert jax.tree.structure(mask_static(1)) == jax.tree.structure(mask_static(1))


# Static's warnings: where the original warns (a value that cannot be hashed, a local
# function), ours does, with a UserWarning.


def _caught(make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return caught


def nested_function():
    def inner(x):
        return x

    return inner


class CallableObject:  # an instance has no __qualname__; the original fails on it
    def __call__(self, x):
        return x


@pytest.mark.parametrize(
    "value, message",
    [
        ([1, 2], "static value of unhashable type 'list'"),
        ({"a": 1}, "static value of unhashable type 'dict'"),
        (jnp.ones(2), "static value of unhashable type"),
        (([1],), "static value of unhashable type 'tuple'"),  # hash() fails inside
        (lambda x: x, "static local function '<lambda>'"),
        (nested_function(), "static local function 'nested_function.<locals>.inner'"),
    ],
)
def test_static_warns_as_the_original(value, message):
    with pytest.warns(UserWarning, match=message) as record:
        static = Static(value)
    assert static.value is value
    assert record[0].category is RecompilationWarning and "frequent JIT recompilations" in str(record[0].message)
    assert record[0].filename == __file__  # the line that made the Static is blamed
    # A Mask is a Static: mask() warns too, as the original's, for a leaf (not a list).
    if jax.tree.leaves(value)[0] is value:
        with pytest.warns(RecompilationWarning, match=message):
            mask([value], is_static=lambda x: True)
    # Not where the value is only carried: unflattening, copying, or asked not to.
    assert not _caught(lambda: jax.tree.map(lambda x: x, [static, jnp.ones(1)]))
    assert not _caught(lambda: (copy.deepcopy(static), pickle.loads(pickle.dumps(Static.wrap([1])))))
    assert not _caught(lambda: (Static(value, warn=False), Static.wrap(value), mask([value], lambda x: True, warn=False)))


@pytest.mark.parametrize("value", ["relu", 3, (0, "one", None), len, jax.nn.relu, nested_function, CallableObject(), None])
def test_static_is_quiet_for_stable_values(value):
    assert not _caught(lambda: Static(value))


def test_modules_hide_local_functions_quietly():
    # The original's modules do not hide their leaves, so it has nothing to warn about;
    # ours hide them when flattened, without a warning on each flattening.
    model = nn.Module(act=lambda x: 2 * x, sizes=[3, 4], w=jnp.ones(2))
    assert not _caught(lambda: jax.jit(lambda m: m.act(m.w))(model))
    assert not _caught(lambda: model.partition(nn.Parameter))
