r"""The original inox's tests of inox.tree (0.7.1's tests/test_tree.py), for ours, and
the original's representation hook, tree_repr, as subclasses written for it use it."""

import pickle

from typing import Hashable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import pytest

import inox.nn as nn

from jax import Array
from inox.tree import Mask, Namespace, Static, combine, mask_static, partition, prepr, unmask_static


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
