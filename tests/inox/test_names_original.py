r"""Every public name of the original inox (the __all__ of each of its modules, in 0.7.1
and 0.8.0) is importable from the module of ours with the same name."""

import importlib

import pytest

ORIGINAL_NAMES = {
    "inox.api": ["automask", "jit", "grad", "value_and_grad", "jacfwd", "jacrev", "hessian", "checkpoint", "vmap", "pmap", "inner", "outer"],
    "inox.debug": ["same_trace"],
    "inox.lift": ["automask", "jit", "grad", "value_and_grad", "jacfwd", "jacrev", "hessian", "checkpoint", "vmap", "pmap"],
    "inox.nn.activation": ["Identity", "Tanh", "Sigmoid", "SiLU", "Softplus", "Softmax", "ReLU", "LeakyReLU", "ELU", "CELU", "GELU", "SELU"],
    "inox.nn.attention": ["MultiheadAttention"],
    "inox.nn.container": ["Sequential"],
    "inox.nn.dropout": ["Dropout", "TrainingDropout"],
    "inox.nn.einops": ["Rearrange", "Reduce", "Repeat"],
    "inox.nn.interpolation": ["Resample"],
    "inox.nn.linear": ["Linear", "Conv", "ConvTransposed"],
    "inox.nn.module": ["Module", "ModuleDef", "Parameter", "ComplexParameter"],
    "inox.nn.normalization": ["BatchNorm", "LayerNorm", "GroupNorm"],
    "inox.nn.padding": ["Pad"],
    "inox.nn.pooling": ["AvgPool", "MaxPool"],
    "inox.nn.recurrent": ["Cell", "Recurrent", "GRUCell", "LSTMCell"],
    "inox.nn.share": ["Scope", "Reference"],
    "inox.nn.ssm": ["SISO", "S4"],
    "inox.nn.state": ["StateEntry", "StateKey", "update_state", "export_state"],
    "inox.numpy": ["flatten", "unflatten", "vectorize"],
    "inox.random": ["PRNG", "set_rng", "get_rng"],
    "inox.tree": ["Namespace", "Partial", "Static", "mask_static", "unmask_static", "partition", "combine", "prepr", "mask", "unmask", "find_duplicates", "is_array"],
}


@pytest.mark.parametrize("module", sorted(ORIGINAL_NAMES))
def test_original_names_import(module):
    ours = importlib.import_module(module)
    missing = [name for name in ORIGINAL_NAMES[module] if not hasattr(ours, name)]
    assert not missing


def test_top_level_names():
    import inox

    for name in ["api", "lift", "debug", "nn", "numpy", "random", "tree", *ORIGINAL_NAMES["inox.api"][:10]]:
        assert hasattr(inox, name)
    assert inox.nn.linear.Conv is inox.nn.Conv


# Public names of the original outside its __all__ lists: helpers that its users import
# (inox.tree.PyTreeDef in annotations, is_module as an is_leaf predicate), properties
# of its layers, and the representation hook of its references and state keys.

OTHER_NAMES = {
    "inox.tree": ["PyTree", "PyTreeDef", "PyTreeMeta", "Mask", "is_atom"],
    "inox.nn.module": ["is_module"],
    "inox.nn.state": ["is_entry"],
    "inox.nn.attention": ["attention"],  # 0.7
}


@pytest.mark.parametrize("module", sorted(OTHER_NAMES))
def test_other_original_names_import(module):
    ours = importlib.import_module(module)
    assert not [name for name in OTHER_NAMES[module] if not hasattr(ours, name)]


def test_helpers_behave_as_the_originals():
    import jax
    import jax.numpy as jnp

    import inox.nn as nn
    from inox.nn.attention import attention
    from inox.nn.module import is_module
    from inox.nn.state import is_entry
    from inox.tree import PyTreeDef, Static, is_atom

    assert isinstance(jax.tree.structure([1]), PyTreeDef)
    assert [is_atom(x) for x in (None, 1, "a", jnp.ones(2), [], (1,), {}, Static(1))] == [True] * 4 + [False] * 4
    assert is_module(nn.ReLU()) and not is_module(nn.Parameter(jnp.ones(1)))
    assert is_entry(nn.StateEntry(1)) and not is_entry(1)
    # Not exported to inox.nn, as in the original.
    assert not hasattr(nn, "is_module") and not hasattr(nn, "is_entry")
    assert nn.attention is importlib.import_module("inox.nn.attention")  # the module, not the function

    q = jax.random.normal(jax.random.key(0), (2, 5, 4))
    k, v = q[:, :3], q[:, :3, :2]
    weights = jax.nn.softmax(jnp.einsum("bsc,btc->bst", q, k) / 2.0, axis=-1)
    assert jnp.allclose(attention(q, k, v), jnp.einsum("bst,btc->bsc", weights, v), atol=1e-6)
    causal = jnp.tril(jnp.ones((5, 3), bool))
    assert jnp.allclose(attention(q, k, v, causal)[:, 0], v[:, 0], atol=1e-6)


def test_layer_properties_of_the_original():
    import jax

    import inox.nn as nn

    key = jax.random.key(0)
    conv = nn.Conv(3, 8, [3, 5], key=key)
    assert conv.ndim == 3 and conv.dimensions == jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    up = nn.ConvTransposed(3, 8, [3, 4], padding=[(0, 1), 1], dilation=2, key=key)
    assert up.ndim == 3 and list(up.transposed_padding) == [(4, 3), (5, 5)]
    assert nn.MaxPool([2, 2, 2]).ndim == nn.AvgPool([2, 2, 2]).ndim == 4
    assert nn.Pad([(1, 1)]).ndim == 2 and nn.Resample([2.0, 2.0]).ndim == 3
    # Properties, not attributes: they are not in the tree definition.
    assert "ndim" not in vars(conv) and "ndim" not in repr(conv)


def test_reference_and_state_key_have_the_tree_repr_hook():
    import jax.numpy as jnp

    import inox.nn as nn

    class Tagged(nn.Reference):
        def tree_repr(self, **kwargs):
            return f"<{self.tag}> " + super().tree_repr(**kwargs)

    ref = Tagged("w", nn.Parameter(jnp.ones(2)))
    assert repr(ref) == "<w> *Parameter(float32[2])"
    assert nn.Reference("w", 1).tree_repr() == "*1"
    assert nn.StateKey(".bn.stats").tree_repr() == "StateKey('.bn.stats')"
