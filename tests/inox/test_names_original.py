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
