r"""Restoring onto shardings, in every format: resharding, ties on devices, conflicts.

The tests run on the 8 CPU devices that ``conftest.py`` asks XLA for.
"""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

import inox_io

from inox.tree import is_array

from models import WeightSharingMLP, assert_tied

FEATURES = 16
FORMATS = ["model.safetensors", "model.msgpack", "model"]  # the last: a (sharded) directory


def mesh8() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]), ("x",))


def mesh4() -> Mesh:
    # Other devices than the first four, in another shape.
    return Mesh(np.array(jax.devices()[4:8]).reshape(2, 2), ("a", "b"))


def spec(leaf, *axes) -> P:
    return P(*axes[: leaf.ndim])


def shard(tree, mesh: Mesh, *axes):
    def put(x):
        return jax.device_put(x, NamedSharding(mesh, spec(x, *axes))) if is_array(x) else x

    return jax.tree.map(put, tree)


@pytest.fixture(scope="module")
def model() -> WeightSharingMLP:
    return shard(WeightSharingMLP(jax.random.key(0), features=FEATURES), mesh8(), "x", None)


def other_sharding(position: str, leaf) -> NamedSharding:
    return NamedSharding(mesh4(), spec(leaf, None, "b") if leaf.ndim == 2 else P("a"))


def assert_values(restored, model) -> None:
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(model)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_model_is_sharded_and_tied(model):
    assert_tied(model)
    assert model.l1.weight.value.sharding == NamedSharding(mesh8(), P("x", None))
    assert len(model.l1.weight.value.addressable_shards) == 8


@pytest.mark.parametrize("name", FORMATS)
def test_reshard_with_callable(tmp_path, model, name):
    inox_io.save(tmp_path / name, model)
    seen = []

    def choose(position, leaf):
        seen.append(position)
        return other_sharding(position, leaf)

    restored = inox_io.load(tmp_path / name, model, shardings=choose)

    assert_tied(restored)
    assert_values(restored, model)
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding == other_sharding("", leaf)
    # Every position is asked, tied ones included.
    assert ".l2.value.weight.value" in seen and ".l4.weight.value.value" in seen


@pytest.mark.parametrize("name", FORMATS)
def test_reshard_from_like_shardings(tmp_path, model, name):
    inox_io.save(tmp_path / name, model)
    like = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh8(), spec(x, None, "x"))),
        model,
    )

    restored = inox_io.load(tmp_path / name, like)

    assert_tied(restored)
    assert_values(restored, model)
    w = restored.l3.weight.value.value
    assert w.sharding == NamedSharding(mesh8(), P(None, "x"))
    assert w.addressable_shards[3].data.shape == (FEATURES, FEATURES // 8)


@pytest.mark.parametrize("name", FORMATS)
def test_one_sharding_for_all(tmp_path, model, name):
    inox_io.save(tmp_path / name, model)
    replicated = NamedSharding(mesh4(), P())

    restored = inox_io.load(tmp_path / name, model, shardings=replicated)

    assert_tied(restored)
    assert_values(restored, model)
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(restored))


@pytest.mark.parametrize("name", FORMATS)
def test_tree_of_shardings(tmp_path, model, name):
    inox_io.save(tmp_path / name, model)
    shardings = jax.tree.map(lambda x: other_sharding("", x) if is_array(x) else x, model)

    restored = inox_io.load(tmp_path / name, model, shardings=shardings)

    assert_tied(restored)
    assert_values(restored, model)
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding == other_sharding("", leaf)


@pytest.mark.parametrize("name", FORMATS)
def test_no_sharding_goes_to_default_device(tmp_path, model, name):
    inox_io.save(tmp_path / name, model)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if is_array(x) else x, model)

    restored = inox_io.load(tmp_path / name, like)

    assert_tied(restored)
    assert_values(restored, model)
    default = SingleDeviceSharding(jax.devices()[0])
    assert all(leaf.sharding == default for leaf in jax.tree.leaves(restored))


@pytest.mark.parametrize("name", FORMATS)
def test_tied_positions_asking_different_shardings(tmp_path, model, name):
    inox_io.save(tmp_path / name, model)

    def choose(position, leaf):
        return NamedSharding(mesh8(), P() if position.startswith(".l2") else spec(leaf, "x"))

    with pytest.raises(ValueError, match=r"\.l1\.value\.\w+\.value and \.l2\.value\.\w+\.value"):
        inox_io.load(tmp_path / name, model, shardings=choose)


@pytest.mark.parametrize("name", FORMATS)
def test_implicit_alias_on_devices(tmp_path, name):
    w = jax.device_put(np.arange(32.0, dtype=np.float32).reshape(8, 4), NamedSharding(mesh8(), P("x")))
    with pytest.warns(UserWarning, match="without a Reference"):
        inox_io.save(tmp_path / name, {"a": w, "b": w})

    s1, s2 = NamedSharding(mesh4(), P("a")), NamedSharding(mesh4(), P(None, "b"))
    with pytest.raises(ValueError, match=r"\['a'\] and \['b'\]"):
        inox_io.load(tmp_path / name, {"a": w, "b": w}, shardings={"a": s1, "b": s2})

    # A position without a sharding follows the other position of its array.
    like = {"a": jax.ShapeDtypeStruct(w.shape, w.dtype), "b": jax.ShapeDtypeStruct(w.shape, w.dtype)}
    restored = inox_io.load(tmp_path / name, like, shardings={"a": s2})
    assert restored["a"] is restored["b"]
    assert restored["a"].sharding == s2
    np.testing.assert_array_equal(np.asarray(restored["a"]), np.asarray(w))


def test_plain_orbax_reads_the_arrays(tmp_path, model):
    manifest = inox_io.save(tmp_path / "model", model, format="orbax")

    arrays = ocp.StandardCheckpointer().restore(tmp_path / "model" / "arrays")

    assert sorted(arrays) == sorted(manifest.arrays)
    _, stored = inox_io.manifest.tree_arrays(model)
    for key, x in stored.items():
        np.testing.assert_array_equal(np.asarray(arrays[key]), np.asarray(x))


def test_orbax_directory_holds_each_shared_array_once(tmp_path, model):
    manifest = inox_io.save(tmp_path / "model", model)

    assert sorted(manifest.arrays) == [
        ".l1.value.bias.value",
        ".l1.value.weight.value",
        ".l3.bias.value",
        ".l3.weight.value.value",
        ".l4.bias.value",
    ]
    # Saved by one process: each array whole, so checksummed.
    assert all(info.crc32 is not None for info in inox_io.inspect(tmp_path / "model").arrays.values())


@pytest.mark.parametrize("name", FORMATS)
def test_keys_and_narrow_dtypes_on_shardings(tmp_path, name):
    rows = NamedSharding(mesh8(), P("x"))
    tree = {
        "keys": jax.device_put(jax.random.split(jax.random.key(0), 8), rows),
        "bf16": jax.device_put(np.arange(32).reshape(8, 4).astype(jax.numpy.bfloat16), rows),
        "u4": jax.device_put(np.arange(8).astype(jax.numpy.uint4), rows),  # stored widened in orbax
    }
    inox_io.save(tmp_path / name, tree)
    target = NamedSharding(mesh4(), P("a"))

    restored = inox_io.load(tmp_path / name, tree, shardings=target)

    for key, x in tree.items():
        assert restored[key].sharding == target and restored[key].dtype == x.dtype
    np.testing.assert_array_equal(jax.random.key_data(restored["keys"]), jax.random.key_data(tree["keys"]))
    np.testing.assert_array_equal(np.asarray(restored["bf16"]), np.asarray(tree["bf16"]))
    np.testing.assert_array_equal(np.asarray(restored["u4"]).astype(int), np.arange(8))


HOST_COPY_SCRIPT = r"""
import ctypes, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np, inox_io
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

def resident_bytes():  # freed heap pages handed back first: only what is still held counts
    ctypes.CDLL(None).malloc_trim(0)
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))

folder = sys.argv[1]
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("x",)), P("x", None))
for name, options in [("model.safetensors", {}), ("model.msgpack", {}), ("ckpt", {"format": "orbax"})]:
    path, warm = os.path.join(folder, name), os.path.join(folder, "warm-" + name)
    like = {"x": jax.ShapeDtypeStruct((4096, 4096), np.float32, sharding=sharding)}
    inox_io.save(warm, {"x": jax.device_put(np.ones((4096, 4096), np.float32), sharding)}, **options)
    inox_io.load(warm, like)  # first-use costs (buffers, threads) of arrays this size, outside the count
    x = jax.device_put(np.ones((4096, 4096), np.float32), sharding).block_until_ready()  # the source freed
    before = resident_bytes()
    inox_io.save(path, {"x": x}, **options)
    saved = resident_bytes() - before
    before = resident_bytes()
    y = inox_io.load(path, like)["x"]
    loaded = resident_bytes() - before - x.nbytes
    assert y.sharding == sharding and bool((np.asarray(y[:8]) == 1).all())
    print(name, saved, loaded)
    del x, y
"""


def test_no_host_copy_of_sharded_arrays_is_kept(tmp_path):
    r"""``np.asarray`` of an array of several shards stores the host copy it assembles
    on the array: a save (and a verified load) that used it would double the memory of
    the model for as long as it lives. Counted in resident memory, in a fresh process
    (a long-lived one's heap holds on to freed pages): a 64 MiB array saved and loaded
    back leaves at most the loaded array behind, in every format. The bound is half the
    array: a second copy (64 MiB) breaks it, while the working set that orbax's
    tensorstore keeps after a read (8-17 MB, varying from machine to machine) does not."""

    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", HOST_COPY_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for line in out.stdout.splitlines():
        name, saved, loaded = line.split()
        assert int(saved) < 32e6, f"{name}: the save kept a host copy of the array ({int(saved)} bytes)"
        assert int(loaded) < 32e6, f"{name}: the load kept a second copy of the array ({int(loaded)} bytes)"
    assert len(out.stdout.splitlines()) == 3, out.stdout
