r"""Tests of the tree utilities: Static, mask/unmask, Namespace, Partial, partition/combine,
find_duplicates and prepr."""

import copy
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections import namedtuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from inox.errors import RecompilationWarning
from inox.tree import (
    Mask,
    Namespace,
    Partial,
    Static,
    combine,
    find_duplicates,
    is_array,
    leaf_paths,
    mask,
    partition,
    prepr,
    static_leaves,
    unmask,
)


def paths_of(tree, **kwargs):
    return [jtu.keystr(path) for path, _ in jtu.tree_leaves_with_path(tree, **kwargs)]


def assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if is_array(x):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y and type(x) is type(y)


# Static


def test_static_equality_and_hash():
    assert Static("relu") == Static("relu")
    assert hash(Static("relu")) == hash(Static("relu"))
    assert Static("relu") != Static("gelu")
    assert Static("relu") != "relu"
    # Equal values of different types are different hyper-parameters.
    assert Static(1) != Static(1.0)
    assert Static(1) != Static(True)
    # Unhashable values still hash (by type) and compare by equality.
    assert Static.wrap([1, 2]) == Static.wrap([1, 2])
    assert hash(Static.wrap([1, 2])) == hash(Static.wrap([3]))
    assert Static.wrap([1, 2]) != Static.wrap([1, 3])
    # Arrays have no boolean equality: identity only.
    a = np.ones(3)
    assert Static.wrap(a) == Static.wrap(a)
    assert Static.wrap(a) != Static.wrap(np.ones(3))
    assert len({Static("a"), Static("a"), Static("b")}) == 2


def test_static_is_leafless():
    tree = [Static("relu"), jnp.ones(2)]
    assert len(jax.tree.leaves(tree)) == 1
    treedef = jax.tree.structure(tree)
    assert treedef == jax.tree.structure([Static("relu"), jnp.zeros(2)])
    assert treedef != jax.tree.structure([Static("gelu"), jnp.zeros(2)])
    assert jax.tree.map(lambda x: x + 1, tree)[0] == Static("relu")


@pytest.mark.parametrize("value", [None, 0, "x", [1, 2], (None,)])
def test_static_pickle_and_copy(value):
    static = Static(value, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilding a wrapper does not warn again
        for s in (pickle.loads(pickle.dumps(static)), copy.deepcopy(static), copy.copy(static)):
            assert type(s) is Static
            assert s.value == value


# mask / unmask


def test_mask_unmask():
    tree = {"w": jnp.ones((2, 3)), "name": "mlp", "n": 3, "b": [jnp.zeros(3), None]}
    masked = mask(tree)
    assert paths_of(masked) == ["['b'][0]", "['w']"]
    assert masked["name"] == Mask("mlp") and type(masked["name"]) is Mask
    assert repr(masked["name"]) == "Mask('mlp')"
    back = unmask(masked)
    assert back["name"] == "mlp" and back["n"] == 3 and back["b"][1] is None
    assert back["w"] is tree["w"]

    # The masked tree goes through jit: its strings are static.
    out = jax.jit(lambda t: jax.tree.map(lambda x: x * 2, t))(masked)
    assert unmask(out)["name"] == "mlp"
    np.testing.assert_array_equal(out["w"], 2 * tree["w"])


def test_mask_is_static():
    tree = {"a": jnp.ones(2), "b": jnp.zeros(3), "n": 3}
    with pytest.warns(RecompilationWarning, match="unhashable type"):
        masked = mask(tree, is_static=lambda x: is_array(x) and x.shape == (3,))
    assert paths_of(masked) == ["['a']", "['n']"]
    assert unmask(masked)["b"] is tree["b"]


def test_is_array():
    assert is_array(jnp.zeros(2)) and is_array(np.zeros(2)) and is_array(np.float32(1))
    assert is_array(jax.ShapeDtypeStruct((2,), jnp.float32))
    assert not is_array(2.0) and not is_array([1.0])


# Namespace and Partial


def test_namespace_sorted_keys():
    ns = Namespace(c=jnp.zeros(1), a=jnp.ones(2), b=[jnp.ones(3)])
    keys = [path for path, _ in jtu.tree_leaves_with_path(ns)]
    assert [jtu.keystr(k) for k in keys] == [".a", ".b[0]", ".c"]
    assert all(isinstance(k[0], jtu.GetAttrKey) for k in keys)
    assert [k[0].name for k in keys] == ["a", "b", "c"]
    # Insertion order does not matter.
    assert jax.tree.structure(ns) == jax.tree.structure(Namespace(b=[0], a=0, c=0))

    ns2 = jax.tree.map(lambda x: x + 1, ns)
    assert type(ns2) is Namespace
    np.testing.assert_array_equal(ns2.c, jnp.ones(1))
    assert repr(ns) == "Namespace(\n  a = float32[2],\n  b = [float32[3]],\n  c = float32[1]\n)"


def test_partial():
    f = Partial(jnp.multiply, jnp.asarray(2.0))
    assert f(3.0) == 6.0
    g = Partial(lambda a, b, scale=1.0: (a + b) * scale, jnp.ones(2), scale=jnp.asarray(3.0))
    # Children in sorted attribute order, as for every namespace: args, func, kwds.
    assert paths_of(g) == [".args[0]", ".func", ".kwds['scale']"]
    with pytest.warns(RecompilationWarning, match="local function 'test_partial.<locals>.<lambda>'"):
        assert paths_of(mask(g)) == [".args[0]", ".kwds['scale']"]
    assert list(g.kwds) == ["scale"] and len(g.args) == 1
    np.testing.assert_array_equal(g(jnp.ones(2)), 6 * jnp.ones(2))
    # Keywords given at call time override the stored ones.
    np.testing.assert_array_equal(g(jnp.ones(2), scale=1.0), 2 * jnp.ones(2))

    # A Partial goes through jit as an argument; its function is static once masked.
    out = jax.jit(lambda p, x: unmask(p)(x))(mask(g, warn=False), jnp.ones(2))
    np.testing.assert_array_equal(out, 6 * jnp.ones(2))
    doubled = unmask(jax.tree.map(lambda x: 2 * x, mask(f)))
    assert doubled(3.0) == 12.0


# partition / combine


def test_partition_oldest_ancestor_rule():
    tree = {"a": (jnp.zeros(2), 1), "b": "x", "c": [jnp.ones(1)]}
    treedef, arrays, tuples, rest = partition(tree, jax.Array, tuple)
    # The tuple is the oldest ancestor of its array: the array goes with the tuple.
    assert arrays == {"['c'][0]": tree["c"][0]}
    assert list(tuples) == ["['a'][0]", "['a'][1]"]
    assert rest == {"['b']": "x"}
    assert_same_tree(combine(treedef, arrays, tuples, rest), tree)

    # Among the filters of a node, the first one wins.
    treedef, first, second, rest = partition(tree, tuple, lambda x: isinstance(x, tuple))
    assert list(first) == ["['a'][0]", "['a'][1]"] and second == {}


def test_partition_predicate_filters():
    tree = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3), "n": 4}
    is_matrix = lambda x: is_array(x) and x.ndim == 2
    treedef, matrices, vectors, rest = partition(tree, is_matrix, jax.Array)
    assert list(matrices) == ["['w']"]
    assert list(vectors) == ["['b']"]
    assert rest == {"['n']": 4}
    assert_same_tree(combine(treedef, rest, vectors, matrices), tree)


def test_partition_is_leaf():
    tree = {"pair": (1, 2), "deep": [(3, 4)]}
    treedef, leaves = partition(tree, is_leaf=lambda x: isinstance(x, tuple))
    assert leaves == {"['deep'][0]": (3, 4), "['pair']": (1, 2)}
    assert treedef.num_leaves == 2
    assert combine(treedef, leaves) == tree

    # is_leaf and filters together: the filter still selects whole leaves.
    treedef, small, rest = partition(tree, lambda x: x == (1, 2), is_leaf=lambda x: isinstance(x, tuple))
    assert small == {"['pair']": (1, 2)} and rest == {"['deep'][0]": (3, 4)}
    assert combine(treedef, small, rest) == tree


def test_combine_names_every_bad_key():
    treedef = jax.tree.structure({"a": 0, "b": 0, "c": 0, "d": 0})
    with pytest.raises(KeyError) as info:
        combine(treedef, {"['a']": 1, "['x']": 2}, {"['y']": 3, "['d']": 4})
    assert info.value.args[0] == (
        """Missing key(s) in leaves: "['b']", "['c']". Unexpected key(s) in leaves: "['x']", "['y']"."""
    )

    # One kind of bad key: the original inox's message, word for word.
    with pytest.raises(KeyError) as info:
        combine(treedef, {"['a']": 1})
    assert info.value.args[0] == """Missing key(s) in leaves: "['b']", "['c']", "['d']"."""
    with pytest.raises(KeyError) as info:
        combine(treedef, {"['a']": 1, "['b']": 2, "['c']": 3, "['d']": 4, "['z']": 5, "['e']": 6})
    assert info.value.args[0] == """Unexpected key(s) in leaves: "['z']", "['e']"."""


def test_static_leaves_and_combine_replacing_them():
    treedef, arrays = partition(mask({"w": jnp.ones(2), "name": "mlp", "n": [1, None]}))
    assert static_leaves(treedef) == {"['n'][0]": 1, "['name']": "mlp"}
    assert static_leaves(jax.tree.structure({"a": 1})) == {}
    out = combine(treedef, arrays, {"['name']": "other"})
    assert out["name"] == Mask("other") and out["n"] == [Mask(1), None] and out["w"] is arrays["['w']"]
    # Given as they are: the fast path, the same definition.
    same = combine(treedef, arrays, static_leaves(treedef))
    assert jax.tree.structure(same) == treedef


def test_leaf_paths():
    assert leaf_paths(jax.tree.structure({"a": [0, 0], "b": 0})) == ("['a'][0]", "['a'][1]", "['b']")
    assert leaf_paths(jax.tree.structure(Namespace(z=0, y=(0, None)))) == (".y[0]", ".z")


keys = st.text(alphabet="abcxyz_'\"", min_size=1, max_size=4)
scalars = st.one_of(
    st.integers(-5, 5),
    st.floats(-2, 2, allow_nan=False),
    st.text(alphabet="ab", max_size=2),
    st.none(),
    st.builds(lambda n: np.arange(n, dtype=np.float32), st.integers(0, 3)),
    st.builds(lambda n: jnp.full((n,), 1.5), st.integers(1, 3)),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(keys, children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=12,
)
filters = st.lists(st.sampled_from([jax.Array, np.ndarray, int, str, list, dict, tuple, float]), max_size=3)


@settings(max_examples=60, deadline=None)
@given(tree=trees, filters=filters)
def test_partition_combine_roundtrip(tree, filters):
    treedef, *dicts = partition(tree, *filters)
    assert len(dicts) == len(filters) + 1
    assert treedef == jax.tree.structure(tree)

    # The dictionaries split the leaves: disjoint, and together every leaf path.
    all_keys = [k for d in dicts for k in d]
    assert len(all_keys) == len(set(all_keys))
    assert sorted(all_keys) == sorted(paths_of(tree)) == sorted(leaf_paths(treedef))

    assert_same_tree(combine(treedef, *dicts), tree)
    assert_same_tree(combine(treedef, *reversed(dicts)), tree)

    # Every leaf goes with its oldest ancestor matching a filter, to the first it matches.
    expected = {}
    _assign(tree, "", filters, expected)
    assert {k: i for i, d in enumerate(dicts) for k in d} == expected

    if all_keys:
        merged = {k: v for d in dicts for k, v in d.items()}
        missing = sorted(merged)[0]
        del merged[missing]
        with pytest.raises(KeyError) as info:
            combine(treedef, merged)
        assert info.value.args[0] == f'Missing key(s) in leaves: "{missing}".'


def _assign(node, prefix, filters, out):
    index = next((i for i, f in enumerate(filters) if isinstance(node, f)), None)
    if index is not None:
        for path in paths_of(node):
            out[prefix + path] = index
    elif isinstance(node, (list, tuple)):
        for i, x in enumerate(node):
            _assign(x, f"{prefix}[{i}]", filters, out)
    elif isinstance(node, dict):
        for k, x in node.items():
            _assign(x, f"{prefix}[{k!r}]", filters, out)
    elif node is not None:
        out[prefix] = len(filters)


# find_duplicates


def test_find_duplicates():
    w = jnp.ones(3)
    shared = [w]
    tree = {"a": w, "b": shared, "c": jnp.ones(3), "d": shared, "n": 1, "m": 1, "s": "x", "t": "x"}
    groups = find_duplicates(tree)
    # Numbers and strings are shared by the interpreter: not reported.
    assert sorted(map(sorted, groups)) == [
        ["['a']", "['b'][0]"],
        ["['b']", "['d']"],
    ]
    assert find_duplicates({"a": jnp.ones(1), "b": jnp.ones(1)}) == []


def run_isolated(code: str) -> str:
    r"""Runs Python code in a fresh interpreter and returns its standard output.

    For code that may recurse endlessly inside JAX's C++ flattening: the interpreter
    is left unusable by such a recursion, which would take the test session with it.
    """

    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_find_duplicates_follows_flattening_order():
    # Attributes are visited in sorted order, as they are flattened, whatever the
    # order in which they were set.
    w = jnp.ones(1)
    assert find_duplicates(Namespace(b=w, a=[w])) == [[".a[0]", ".b"]]
    ns = Namespace(z=w)
    ns.y = {"k": w}
    assert find_duplicates(ns) == [[".y['k']", ".z"]]


def test_find_duplicates_cycles():
    ns = Namespace(w=jnp.ones(1))
    ns.me = ns
    assert find_duplicates({"ns": ns}) == [["['ns']", "['ns'].me"]]

    # A list that contains itself is entered once only.
    out = run_isolated(
        """
        import jax.numpy as jnp
        from inox.tree import find_duplicates
        x = [jnp.ones(1)]
        x.append(x)
        print(find_duplicates({'a': x, 'b': x}))
        """
    )
    assert out == """[["['a']", "['a'][1]", "['b']"]]\n"""


# prepr


def test_prepr_arrays():
    assert prepr(jnp.zeros((64, 64))) == "float32[64, 64]"
    assert prepr(jnp.zeros((), jnp.int32)) == "int32[]"
    assert prepr(jax.ShapeDtypeStruct((2,), jnp.float16), typeonly=False) == "float16[2]"
    assert prepr({"a": jnp.ones(3)}, typeonly=False) == "{'a': Array([1., 1., 1.], dtype=float32)}"
    assert prepr([np.arange(2)], typeonly=False) == "[array([0, 1])]"


def test_prepr_containers():
    P = namedtuple("P", "a b")
    assert prepr([]) == "[]" and prepr({}) == "{}" and prepr(()) == "()"
    assert prepr((jnp.ones(1),)) == "(float32[1],)"
    assert prepr((1, "a", None)) == "(1, 'a', None)"
    assert prepr(P(1, jnp.zeros(2))) == "P(a=1, b=float32[2])"
    assert prepr(Namespace(b=2, a=[1])) == "Namespace(\n  a = [1],\n  b = 2\n)"
    assert prepr(Namespace()) == "Namespace()"
    assert prepr(Namespace(a=1, _hidden=2)) == "Namespace(\n  a = 1\n)"
    assert prepr(Partial(max, 1, key=abs)) == (
        "Partial(\n  args = (1,),\n  func = <built-in function max>,\n  kwds = {'key': <built-in function abs>}\n)"
    )


def test_prepr_line_breaking():
    tree = {"weight": jnp.zeros((64, 64)), "bias": jnp.zeros(64)}
    one_line = "{'weight': float32[64, 64], 'bias': float32[64]}"
    assert prepr(tree) == one_line
    assert prepr(tree, linewidth=len(one_line)) == one_line
    assert prepr(tree, linewidth=len(one_line) - 1) == "{\n  'weight': float32[64, 64],\n  'bias': float32[64]\n}"

    nested = {"a": [1, 2, 3], "bb": {"c": [4, 5], "d": "e" * 10}}
    # The inner dictionary takes 40 characters on its line, indent and key included.
    assert len("  'bb': {'c': [4, 5], 'd': 'eeeeeeeeee'}") == 40
    assert prepr(nested, linewidth=40) == "{\n  'a': [1, 2, 3],\n  'bb': {'c': [4, 5], 'd': 'eeeeeeeeee'}\n}"
    assert prepr(nested, linewidth=39) == (
        "{\n"
        "  'a': [1, 2, 3],\n"
        "  'bb': {\n"
        "    'c': [4, 5],\n"
        "    'd': 'eeeeeeeeee'\n"
        "  }\n"
        "}"
    )
    # The trailing comma counts: at width 38, the first item line would be 39 long.
    assert len("  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],") == 39
    assert prepr([[0] * 12, 1], linewidth=41) == "[[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1]"
    assert prepr([[0] * 12, 1], linewidth=39) == "[\n  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],\n  1\n]"
    assert prepr([[0] * 12, 1], linewidth=38) == (
        "[\n  [\n" + "".join("    0,\n" for _ in range(11)) + "    0\n  ],\n  1\n]"
    )


def test_prepr_key_counts_in_width():
    # The key in front of a value takes room on its line.
    tree = {"k" * 30: list(range(15))}
    out = prepr({"a": tree}, linewidth=70)
    assert max(map(len, out.splitlines())) <= 70
    assert out.splitlines()[2] == "    'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkk': ["
    out = prepr(Namespace(long_attribute_name=list(range(20))), linewidth=60)
    assert max(map(len, out.splitlines())) <= 60
    assert out.splitlines()[:2] == ["Namespace(", "  long_attribute_name = ["]


def test_prepr_one_tuple_breaks_with_its_comma():
    assert prepr(([1, 2, 3],), linewidth=12) == "([1, 2, 3],)"
    # Broken, the element and its comma would take as much room: all is broken.
    assert prepr(([1, 2, 3],), linewidth=11) == "(\n  [\n    1,\n    2,\n    3\n  ],\n)"
    assert prepr((1,), linewidth=1) == "(\n  1,\n)"


def test_prepr_cycles():
    x = []
    x.append(x)
    assert prepr(x) == "[[...]]"
    d = {}
    d["self"] = d
    assert prepr(d) == "{'self': {...}}"
    t = ([],)
    t[0].append(t)
    assert prepr(t) == "([(...)],)"
    ns = Namespace(w=jnp.ones(2))
    ns.me = ns
    assert prepr(ns) == "Namespace(\n  me = Namespace(...),\n  w = float32[2]\n)"
    # Shared, but not cyclic: printed twice.
    y = [1]
    assert prepr([y, y]) == "[[1], [1]]"


ints_and_strings = st.recursive(
    st.one_of(st.integers(-100, 100), st.text(alphabet="ab'", max_size=3)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(alphabet="xy", max_size=2), children, max_size=3),
    ),
    max_leaves=15,
)


@settings(max_examples=80, deadline=None)
@given(tree=ints_and_strings, linewidth=st.integers(24, 60))
def test_prepr_layout_property(tree, linewidth):
    out = prepr(tree, linewidth=linewidth, typeonly=False)
    # Still the same Python literal, whatever the layout.
    assert eval(out) == tree
    # Leaves are short and the depth is bounded: every line fits.
    assert all(len(line) <= linewidth for line in out.splitlines()), out
    # One line exactly when the one-line form fits.
    assert prepr(tree, linewidth=len(repr(tree))) == repr(tree)
    if isinstance(tree, (list, dict)) and tree:
        assert "\n" in prepr(tree, linewidth=len(repr(tree)) - 1)
    # Two spaces of indentation per level.
    for line in out.splitlines():
        assert (len(line) - len(line.lstrip(" "))) % 2 == 0
