r"""Checkpoints of models made of the layers that came with the original inox's API
(recurrent cells, S4, transposed convolutions, pooling, einops, resampling, padding),
ties included, through inox_io: saved, then loaded into an abstract like and into a
fresh model, in the file formats and a directory format."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inox.nn as nn
import inox_io


class Decoder(nn.Scope):
    r"""One GRU cell shared by two recurrences (forward and backward) through a
    reference, and one parameter (the S4's B) tied to a plain one."""

    def __init__(self, key, hidden=6):
        keys = jax.random.split(key, 6)
        cell = nn.Reference("cell", nn.GRUCell(4, hidden, key=keys[0]))
        self.forward = nn.Recurrent(cell)
        self.backward = nn.Recurrent(cell, reverse=True)
        self.lstm = nn.Recurrent(nn.LSTMCell(hidden, hidden, bias=False, key=keys[1]))
        self.ssm = nn.S4(hidden, key=keys[2])
        self.ssm.B = nn.Reference("B", self.ssm.B)
        self.b_again = self.ssm.B
        self.up = nn.ConvTransposed(2, 3, [3, 3], stride=2, padding=1, key=keys[3])
        self.down = nn.Conv(3, 2, [3, 3], padding="SAME", key=keys[4])
        self.pools = [nn.MaxPool([2, 2]), nn.AvgPool([2, 2], stride=1, padding=1)]
        self.shape = nn.Sequential(nn.Rearrange("L (H W C) -> L H W C", H=2, W=3), nn.Pad([(1, 1), (0, 1)]))
        self.resample = nn.Resample([2.0, 2.0], method="nearest")
        self.norm = nn.LayerNorm()

    def __call__(self, xs):
        h = self.forward(xs) + self.backward(xs)
        h = self.lstm(h)
        h = h + jnp.real(jax.vmap(self.ssm, in_axes=-1, out_axes=-1)(h))
        images = self.shape(self.norm(h))  # (L, 4, 4, 1)
        images = jnp.concatenate([images, images], axis=-1)
        images = self.down(self.up(images))
        images = self.pools[1](self.pools[0](self.resample(images)))
        return images


@pytest.fixture(scope="module")
def model():
    return Decoder(jax.random.key(0))


XS = jax.random.normal(jax.random.key(1), (5, 4))


def check(restored, model):
    assert restored.forward.cell is restored.backward.cell
    assert isinstance(restored.forward.cell, nn.Reference) and restored.forward.cell.tag == "cell"
    assert restored.b_again is restored.ssm.B
    assert isinstance(restored.ssm.B.obj, nn.ComplexParameter)
    assert restored.ssm.B().dtype == jnp.complex64
    expected = dict(jax.tree_util.tree_leaves_with_path(model))
    got = dict(jax.tree_util.tree_leaves_with_path(restored))
    assert list(map(jax.tree_util.keystr, got)) == list(map(jax.tree_util.keystr, expected))
    for path, leaf in expected.items():
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(leaf), err_msg=jax.tree_util.keystr(path))
    # Hyper-parameters (strides, patterns, methods) come from the like.
    assert restored.up.stride == (2, 2) and restored.shape.layers[0].pattern == "L (H W C) -> L H W C"
    np.testing.assert_array_equal(restored(XS), model(XS))


def test_the_model_runs_and_ties(model):
    y = model(XS)
    assert y.shape == (5, 8, 8, 2) and bool(jnp.isfinite(y).all())
    paths = list(model.partition(nn.Parameter)[1])
    # The first occurrence in sorted depth-first order is kept (b_again < backward <
    # forward < ssm), the others pruned.
    assert not any(p.startswith((".forward", ".ssm.B")) for p in paths)
    assert ".backward.cell.value.lin_h.weight.value" in paths
    assert ".ssm.A.log_real" in paths and ".b_again.value.real" in paths


@pytest.mark.parametrize("name", ["model.safetensors", "model.msgpack", "sharded"])
def test_save_and_load(model, name, tmp_path):
    path = tmp_path / name
    inox_io.save(path, model, format="sharded" if name == "sharded" else None)

    check(inox_io.load(path, inox_io.abstract(Decoder, jax.random.key(0))), model)
    check(inox_io.load(path, Decoder(jax.random.key(7))), model)  # a fresh model, other values


def test_gradient_step_then_checkpoint(model, tmp_path):
    # A trained (updated) model: the tie is kept through the update and the file.
    static, params, others = model.partition(nn.Parameter)
    grads = jax.grad(lambda p: jnp.mean(static(p, others)(XS) ** 2))(params)
    trained = static({k: v - 0.1 * grads[k] for k, v in params.items()}, others)
    assert trained.forward.cell is trained.backward.cell

    inox_io.save(tmp_path / "trained.safetensors", trained)
    check(inox_io.load(tmp_path / "trained.safetensors", model), trained)
