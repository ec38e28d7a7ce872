r"""Tests of the layers of inox.nn against plain NumPy reference implementations."""

import itertools
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inox
import inox.nn as nn


@pytest.fixture(autouse=True)
def _exact_matmuls():
    # Accelerators may default to reduced-precision matmuls and convolutions; the
    # references are computed in float64.
    with jax.default_matmul_precision("highest"):
        yield


def randn(seed, *shape):
    # NumPy draws: every new shape of jax.random would cost a compilation.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype=jnp.float32)


def assert_close(actual, expected, tol=1e-4):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


@jax.jit
def call(module, *args, **kwargs):
    # One compilation instead of one per operation.
    return module(*args, **kwargs)


def assert_grads_flow(loss, model, *args):
    r"""Checks that the gradients of every parameter are finite and not all zero."""

    grads = jax.jit(jax.grad(loss))(model, *args)
    leaves = jax.tree.leaves(grads)
    assert leaves
    for g in leaves:
        assert bool(jnp.all(jnp.isfinite(g)))
    assert any(bool(jnp.any(g != 0)) for g in leaves)


# State


def test_state_key():
    a, b = nn.StateKey(".a"), nn.StateKey(".b")

    assert repr(a) == "StateKey('.a')"
    assert a == nn.StateKey(".a") and a != b and a != ".a"
    assert hash(a) == hash(nn.StateKey(".a"))
    assert sorted([b, a]) == [a, b]
    assert jax.tree.leaves(a) == [a]  # a leaf, not a node
    assert pickle.loads(pickle.dumps(a)) == a

    with pytest.raises(AttributeError):
        a.key = ".b"


def test_state_entry_is_pytree():
    entry = nn.StateEntry({"count": jnp.zeros(()), "name": "n"})
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(entry)]
    assert paths == [".value['count']"]

    entry = jax.tree.map(lambda x: x + 1, entry)
    assert entry.value["name"] == "n" and float(entry.value["count"]) == 1.0


def test_export_state():
    model = nn.Sequential(nn.BatchNorm(2), nn.ReLU(), nn.BatchNorm(3))
    model, state = nn.export_state(model)

    keys = [nn.StateKey(".layers[0].stats"), nn.StateKey(".layers[2].stats")]
    assert list(state) == keys
    assert [layer.stats for layer in model.layers[::2]] == keys
    assert state[keys[1]][0].shape == (3,)

    # The keys are static: the module has no state leaf any more, only the scalar
    # epsilon and momentum of each layer.
    assert all(leaf.shape == () for leaf in jax.tree.leaves(model))
    assert len(jax.tree.leaves(model)) == 4

    # Nothing left to export.
    assert nn.export_state(model)[1] == {}

    # The keys survive a partition round trip, as part of the module definition.
    modef, params, others = model.partition(nn.Parameter)
    assert modef(params, others).layers[2].stats == keys[1]


def test_export_shared_state_once():
    bn = nn.BatchNorm(2)
    scope = nn.Scope(a=nn.Reference("bn", bn), b=nn.Reference("bn", bn))
    scope, state = nn.export_state(scope)

    assert list(state) == [nn.StateKey(".a.value.stats")]
    assert scope.a is scope.b


def test_update_state_copies():
    k = nn.StateKey(".k")
    state = {k: jnp.zeros(())}
    new = nn.update_state(state, {k: jnp.ones(())})

    assert new is not state
    assert float(state[k]) == 0.0 and float(new[k]) == 1.0


def test_state_through_jit():
    k = nn.StateKey(".k")
    state = {k: jnp.zeros(2), nn.StateKey(".a"): jnp.ones(1)}
    out = jax.jit(lambda s: nn.update_state(s, {k: s[k] + 1}))(state)
    assert_close(out[k], np.ones(2))


# Normalization


def ref_standardize(x, axes, eps):
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_layer_norm():
    x = randn(0, 4, 3, 5)

    norm = nn.LayerNorm()
    assert_close(norm(x), ref_standardize(x, -1, 1e-5))
    assert jax.tree.leaves(norm) == [norm.epsilon] and norm.epsilon.shape == ()

    norm = nn.LayerNorm((-2, -1), 1e-3)
    assert_close(norm(x), ref_standardize(x, (-2, -1), 1e-3))
    assert_close(nn.LayerNorm([0, 2])(x), ref_standardize(x, (0, 2), 1e-5))

    gx = jax.jit(jax.grad(lambda x: jnp.sum(norm(x) ** 3)))(x)
    assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.any(gx != 0))


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_norm(groups):
    x = randn(0, 2, 4, 5, 6)
    norm = nn.GroupNorm(groups)

    # Reference: one loop per group, statistics over its channels only.
    xs = np.asarray(x)
    expected = np.empty_like(xs, dtype=np.float64)
    size = 6 // groups
    for g in range(groups):
        channels = slice(g * size, (g + 1) * size)
        expected[..., channels] = ref_standardize(xs[..., channels], -1, 1e-5)

    assert_close(norm(x), expected)
    if groups == 1:
        assert_close(norm(x), nn.LayerNorm()(x))


def test_group_norm_invalid():
    with pytest.raises(ValueError):
        nn.GroupNorm(4)(jnp.ones((2, 6)))


def test_batch_norm_positional_arguments():
    # The order of the original: channels, epsilon, momentum.
    bn = nn.BatchNorm(3, 1e-3, 0.8)
    assert float(bn.epsilon) == pytest.approx(1e-3) and float(bn.momentum) == pytest.approx(0.8)
    assert jax.tree.leaves(nn.export_state(bn)[0]) == [bn.epsilon, bn.momentum]


def test_batch_norm_train_and_eval():
    bn, state = nn.export_state(nn.BatchNorm(3, momentum=0.8))
    x = 3.0 + 2.0 * randn(0, 4, 5, 3)

    step = jax.jit(lambda m, x, s: m(x, s))
    y, new = step(bn, x, state)

    axes = (0, 1)
    assert_close(y, ref_standardize(x, axes, 1e-5))

    xs = np.asarray(x, dtype=np.float64)
    mean, var = new[bn.stats]
    assert isinstance(new[bn.stats], nn.Statistics)
    assert_close(new[bn.stats].mean, 0.2 * xs.mean(axis=axes))
    assert_close(var, 0.8 + 0.2 * xs.var(axis=axes))

    # The input state is left as it is.
    assert_close(state[bn.stats][0], np.zeros(3))

    # Evaluation: running statistics, no update, even under jit.
    bn.train(False)
    y, same = step(bn, x, new)
    assert_close(same[bn.stats][0], mean)
    assert_close(y, (xs - np.asarray(mean)) / np.sqrt(np.asarray(var) + 1e-5))


def test_batch_norm_running_stats_converge():
    bn, state = nn.export_state(nn.BatchNorm(2, momentum=0.5))
    xs = 5.0 + 3.0 * randn(0, 40, 256, 2)

    def body(state, x):
        _, state = bn(x, state)
        return state, None

    # The state is a loop carry: its structure and dtypes must not change.
    state, _ = jax.lax.scan(body, state, xs)
    mean, var = state[bn.stats]

    assert_close(mean, np.full(2, 5.0), tol=0.5)
    assert_close(var, np.full(2, 9.0), tol=1.5)


def test_batch_norm_grad():
    bn, state = nn.export_state(nn.BatchNorm(3))
    x = randn(0, 8, 3)

    def loss(x, s):
        y, s = bn(x, s)
        return jnp.sum(y * jnp.arange(3.0)) + jnp.sum(y**3), s

    # Gradient with respect to the input, with the batch statistics in the graph.
    gx, new = jax.jit(jax.grad(loss, has_aux=True))(x, state)
    assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.any(gx != 0))
    assert set(new) == set(state)


def test_batch_norm_needs_export():
    with pytest.raises(TypeError, match="export_state"):
        nn.BatchNorm(2)(jnp.ones((4, 2)), {})


def test_batch_norm_refuses_unbatched_input_in_training():
    bn, state = nn.export_state(nn.BatchNorm(2))

    # An AssertionError, as in the original, and a ValueError.
    with pytest.raises(AssertionError, match="not batched"):
        bn(jnp.ones(2), state)
    with pytest.raises(ValueError, match="not batched"):
        jax.vmap(bn, in_axes=(0, None))(jnp.ones((4, 2)), state)
    with pytest.raises(TypeError):
        bn(jnp.ones((4, 2)), None)

    bn.train(False)
    y, _ = bn(jnp.ones(2), state)
    assert y.shape == (2,)


# Convolution


def ref_conv(x, w, b, stride, padding, dilation, groups):
    r"""Direct N-d cross-correlation, one output position at a time."""

    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n = w.ndim - 2
    size = [(k - 1) * d + 1 for k, d in zip(w.shape[:n], dilation)]

    dilated = np.zeros((*size, *w.shape[n:]))
    dilated[tuple(slice(None, None, d) for d in dilation)] = w

    spatial = x.shape[1:-1]
    if padding == "VALID":
        pads = [(0, 0)] * n
    elif padding == "SAME":
        pads = []
        for length, s, k in zip(spatial, stride, size):
            total = max((math.ceil(length / s) - 1) * s + k - length, 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = padding
    x = np.pad(x, [(0, 0), *pads, (0, 0)])

    out = [(length - k) // s + 1 for length, k, s in zip(x.shape[1:-1], size, stride)]
    cin, cout = w.shape[-2], w.shape[-1] // groups
    y = np.zeros((x.shape[0], *out, w.shape[-1]))

    for position in itertools.product(*map(range, out)):
        window = tuple(slice(p * s, p * s + k) for p, s, k in zip(position, stride, size))
        patch = x[(slice(None), *window)]
        for g in range(groups):
            y[(slice(None), *position, slice(g * cout, (g + 1) * cout))] = np.tensordot(
                patch[..., g * cin : (g + 1) * cin],
                dilated[..., g * cout : (g + 1) * cout],
                axes=n + 1,
            )

    return y if b is None else y + np.asarray(b)


CONV_CASES = [
    # kernel, stride, padding, dilation, groups, spatial
    (3, 1, 0, 1, 1, (9,)),
    (4, 2, 1, 1, 2, (11,)),
    (3, 1, "SAME", 2, 1, (10,)),
    ((3, 2), (1, 2), "SAME", 1, 1, (7, 8)),
    ((3, 3), 2, [(1, 2), 0], (1, 2), 3, (9, 9)),
    ((2, 3), 1, "VALID", 1, 6, (5, 6)),
    ((2, 2, 3), 1, 1, 1, 1, (4, 5, 5)),
    ((3, 1, 2), (2, 1, 1), "SAME", 1, 2, (5, 3, 4)),
]


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,spatial", CONV_CASES)
def test_conv_vs_reference(kernel, stride, padding, dilation, groups, spatial):
    # The positional order of the original: kernel size, bias, stride, dilation, padding, groups.
    conv = nn.Conv(6, 6, kernel, True, stride, dilation, padding, groups, key=jax.random.key(0))
    conv.bias.value = randn(1, 6)

    n = len(spatial)
    kernel = (kernel,) if isinstance(kernel, int) else kernel
    assert conv.kernel.shape == (*kernel, 6 // groups, 6)

    x = randn(2, 2, *spatial, 6)
    y = call(conv, x)

    def expand(v):
        return (v,) * n if isinstance(v, int) else tuple(v)

    if isinstance(padding, str):
        pads = padding
    else:
        pads = [(p, p) if isinstance(p, int) else p for p in expand(padding)]

    expected = ref_conv(x, conv.kernel(), conv.bias(), expand(stride), pads, expand(dilation), groups)
    assert y.shape == expected.shape
    assert_close(y, expected)


def test_conv_batch_dims_and_no_bias():
    conv = nn.Conv(3, 4, (3, 3), padding=1, bias=False, key=jax.random.key(0))
    assert conv.bias is None and len(jax.tree.leaves(conv)) == 1

    x = randn(0, 2, 3, 6, 6, 3)
    y = call(conv, x)
    assert y.shape == (2, 3, 6, 6, 4)

    # Extra batch axes and unbatched inputs agree with the one-batch-axis result.
    assert_close(y.reshape(6, 6, 6, 4), conv(x.reshape(6, 6, 6, 3)))
    assert_close(y[1, 2], conv(x[1, 2]))

    # Under vmap, too.
    assert_close(jax.vmap(conv)(x.reshape(6, 6, 6, 3)), y.reshape(6, 6, 6, 4))


def test_conv_invalid():
    with pytest.raises(ValueError):
        nn.Conv(4, 6, 3, groups=4, key=jax.random.key(0))
    with pytest.raises(ValueError):
        nn.Conv(4, 4, (3, 3), stride=(1, 1, 1), key=jax.random.key(0))


def test_conv_grad_and_jit():
    conv = nn.Conv(2, 4, (3, 3), stride=2, padding="SAME", key=jax.random.key(0))
    x = randn(0, 2, 8, 8, 2)

    assert_close(jax.jit(lambda m, x: m(x))(conv, x), conv(x))
    assert_grads_flow(lambda m, x: jnp.sum(m(x) ** 2), conv, x)


# Attention


def ref_attention(attn, xq, xk, xv, mask):
    r"""Loops over heads with explicit projections, in float64."""

    def project(linear, x):
        y = np.asarray(x, np.float64) @ np.asarray(linear.weight())
        return y if linear.bias is None else y + np.asarray(linear.bias())

    q, k, v = project(attn.lin_q, xq), project(attn.lin_k, xk), project(attn.lin_v, xv)
    d = q.shape[-1] // attn.heads
    heads = []
    for h in range(attn.heads):
        part = slice(h * d, (h + 1) * d)
        logits = q[..., part] @ np.swapaxes(k[..., part], -1, -2) / np.sqrt(d)
        logits = np.where(mask, logits, -np.inf)
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights = weights / weights.sum(axis=-1, keepdims=True)
        heads.append(weights @ v[..., part])

    return project(attn.lin_y, np.concatenate(heads, axis=-1))


def test_attention_vs_reference():
    attn = nn.MultiheadAttention(8, heads=4, key=jax.random.key(0))
    attn = jax.tree.map(lambda p: p + 0.1, attn)  # non-zero biases
    assert attn.lin_y.bias is None  # the output projection has none

    xq, xk, xv = randn(1, 2, 5, 8), randn(2, 2, 7, 8), randn(3, 2, 7, 8)
    full = np.ones((5, 7), dtype=bool)
    assert_close(call(attn, xq, xk, xv), ref_attention(attn, xq, xk, xv, full))

    # Self-attention by default, with a key padding mask.
    mask = np.arange(5) < np.asarray([[3], [5]])  # (batch, L_k)
    mask = mask[:, None, :]  # (batch, 1, L_k)
    assert_close(call(attn, xq, mask=mask[:, None]), ref_attention(attn, xq, xq, xq, mask))


def test_attention_causal():
    attn = nn.MultiheadAttention(6, heads=2, key=jax.random.key(0), causal=True)
    x = randn(0, 3, 6, 6)
    y = call(attn, x)

    causal = np.tril(np.ones((6, 6), dtype=bool))
    assert_close(y, ref_attention(attn, x, x, x, causal))

    # Changing the future does not change the past, but does change the future.
    x2 = x.at[:, 4:].set(randn(1, 3, 2, 6))
    y2 = call(attn, x2)
    assert_close(y2[:, :4], y[:, :4], tol=1e-6)
    assert not np.allclose(y2[:, 4:], y[:, 4:])

    # The causal mask is combined with a user mask.
    mask = np.asarray([True, False, True, True, True, True])
    assert_close(call(attn, x, mask=mask), ref_attention(attn, x, x, x, causal & mask))


def test_attention_fully_masked_is_finite():
    attn = nn.MultiheadAttention(4, heads=2, key=jax.random.key(0))
    y = attn(randn(0, 3, 4), mask=jnp.zeros((3, 3), dtype=bool))
    assert bool(jnp.all(jnp.isfinite(y)))


def test_attention_unbatched_grad_and_jit():
    attn = nn.MultiheadAttention(4, heads=2, key=jax.random.key(0), bias=False, causal=True)
    assert attn.lin_q.bias is None
    x = randn(0, 5, 4)

    assert attn(x).shape == (5, 4)
    assert_close(jax.jit(lambda m, x: m(x))(attn, x), attn(x))
    assert_grads_flow(lambda m, x: jnp.sum(m(x) ** 2), attn, x)


def test_attention_features():
    # H = C // N features per head unless given; the output has C' features.
    attn = nn.MultiheadAttention(8, heads=3, key=jax.random.key(0))
    assert attn.lin_q.weight.shape == (8, 6) and attn.lin_y.weight.shape == (6, 8)

    attn = nn.MultiheadAttention(8, 5, 4, heads=2, key=jax.random.key(0))
    assert attn.lin_k.weight.shape == (8, 8) and attn.lin_y.weight.shape == (8, 5)
    assert attn(randn(0, 3, 8), randn(1, 7, 8)).shape == (3, 5)


def test_attention_causal_with_more_keys():
    # Query i attends to the keys j with j - i <= T - S: the last query sees them all.
    attn = nn.MultiheadAttention(4, heads=2, causal=True, key=jax.random.key(0))
    xq, xk = randn(0, 3, 4), randn(1, 5, 4)
    causal = np.tril(np.ones((3, 5), dtype=bool), 2)
    assert_close(call(attn, xq, xk), ref_attention(attn, xq, xk, xk, causal))


def test_attention_dropout():
    attn = nn.MultiheadAttention(4, heads=2, dropout=0.5, key=jax.random.key(0))
    assert attn.dropout.shape == ()  # an array leaf
    x = randn(0, 6, 4)

    # Without a key, no dropout; with one, some attention weights are dropped.
    assert_close(attn(x), ref_attention(attn, x, x, x, np.ones((6, 6), dtype=bool)))
    assert not np.allclose(attn(x, key=jax.random.key(1)), attn(x))
    assert_close(attn(x, key=jax.random.key(1)), attn(x, key=jax.random.key(1)))
    assert_close(nn.MultiheadAttention(4, dropout=0.0, key=jax.random.key(0))(x, key=jax.random.key(1)),
                 nn.MultiheadAttention(4, key=jax.random.key(0))(x))


# Containers


def test_sequential():
    l1 = nn.Linear(3, 4, key=jax.random.key(0))
    l2 = nn.Linear(4, 2, key=jax.random.key(1))
    model = nn.Sequential(l1, nn.Tanh(), l2)
    x = randn(2, 5, 3)

    assert isinstance(model.layers, list) and len(model.layers) == 3
    assert_close(model(x), l2(jnp.tanh(l1(x))))
    assert_close(jax.jit(lambda m, x: m(x))(model, x), model(x))
    assert_grads_flow(lambda m, x: jnp.sum(m(x) ** 2), model, x)

    paths = [path for path in model.partition(nn.Parameter)[1]]
    assert paths[0] == ".layers[0].bias.value"

    assert nn.Sequential()(x) is x


# Dropout


def test_dropout():
    x = jnp.ones((100, 100))
    key = jax.random.key(0)
    drop = nn.Dropout(0.3)
    y = drop(x, key)

    kept = np.asarray(y != 0)
    assert abs(kept.mean() - 0.7) < 0.02
    assert_close(y[kept], np.full(kept.sum(), 1 / 0.7))
    assert_close(drop(x, key), y)  # deterministic given the key
    assert not np.array_equal(drop(x, jax.random.key(1)), y)

    assert_close(nn.Dropout(0.0)(x, key), x)
    assert_close(nn.Dropout(1.0)(x, key), np.zeros((100, 100)))
    g = jax.grad(lambda x: jnp.sum(nn.Dropout(1.0)(x, key)))(x)
    assert_close(g, np.zeros((100, 100)))  # not NaN

    # The rate is an array leaf: it is traced, and partitioned with the arrays.
    assert drop.p.shape == () and jax.tree.leaves(drop) == [drop.p]
    rates = jax.vmap(lambda p: jnp.mean(nn.Dropout(p)(x, key) == 0))(jnp.asarray([0.0, 0.5]))
    assert float(rates[0]) == 0.0 and abs(float(rates[1]) - 0.5) < 0.02

    # Gradients flow through the kept elements only.
    g = jax.grad(lambda x: jnp.sum(drop(x, key)))(x)
    assert_close(g, np.where(kept, 1 / 0.7, 0.0))

    with pytest.raises(ValueError):
        nn.Dropout(1.5)


def test_training_dropout():
    model = nn.Sequential(nn.Linear(2, 2, key=jax.random.key(0)), nn.TrainingDropout(0.5))
    drop = model.layers[1]
    x = jnp.ones((64, 8))

    assert drop.training
    assert bool(jnp.any(drop(x, jax.random.key(0)) == 0))
    # Without a key, the 'dropout' generator gives one.
    with pytest.raises(ValueError, match="dropout"):
        drop(x)
    with inox.random.set_rng(dropout=inox.random.PRNG(0)):
        assert bool(jnp.any(drop(x) == 0))

    model.train(False)
    assert drop.training is False
    assert drop(x) is x
    assert_close(jax.jit(lambda m, x: m(x))(model, jnp.ones((3, 2))), model.layers[0](jnp.ones((3, 2))))

    # The mode is static: jit sees it in the tree definition.
    f = jax.jit(lambda d, x, k: d(x, k))
    assert bool(jnp.all(f(drop, x, jax.random.key(0)) == 1))
    model.train(True)
    assert bool(jnp.any(f(drop, x, jax.random.key(0)) == 0))
