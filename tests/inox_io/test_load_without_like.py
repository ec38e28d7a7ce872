r"""Loads without a like (every position of the file), and the non-array leaves of a
load: warned about, taken from the file on request, never reported missing."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inox_io
from inox_io import CheckpointError

from models import WeightSharingMLP, bits_equal

PATHS = {
    "safetensors": "m.safetensors",
    "msgpack": "m.msgpack",
    "sharded": "m",
    "orbax": "m",
    "index": "m.safetensors.index.json",
}


def save(tmp_path, layout: str, tree) -> str:
    path = tmp_path / PATHS[layout]
    options = {"format": layout} if layout in ("sharded", "orbax") else {}
    inox_io.save(path, tree, **options)
    return path


@pytest.mark.parametrize("layout", list(PATHS))
def test_every_position_of_the_file_with_ties_as_one_array(tmp_path, layout):
    model = WeightSharingMLP(jax.random.key(0), features=4)
    path = save(tmp_path, layout, model)

    loaded = inox_io.load(path)

    layers = [f".{layer}.value.{p}.value" for layer in ("l1", "l2") for p in ("weight", "bias")]
    assert sorted(loaded) == sorted(layers + [".l3.bias.value", ".l3.weight.value.value", ".l4.bias.value", ".l4.weight.value.value"])
    assert loaded[".l2.value.weight.value"] is loaded[".l1.value.weight.value"]
    assert loaded[".l4.weight.value.value"] is loaded[".l3.weight.value.value"]
    assert loaded[".l4.bias.value"] is not loaded[".l3.bias.value"]
    assert bits_equal(loaded[".l3.weight.value.value"], model.l3.weight.value.value)
    assert bits_equal(loaded[".l2.value.bias.value"], model.l1.bias.value)


def test_json_leaves_and_prng_keys_come_as_saved(tmp_path):
    keys = jax.random.split(jax.random.key(1, impl="rbg"), 3)
    path = save(tmp_path, "safetensors", {"w": jnp.arange(3.0), "step": 5, "name": "run", "k": keys})

    loaded = inox_io.load(path)

    assert loaded["['step']"] == 5 and loaded["['name']"] == "run"
    assert loaded["['k']"].dtype == keys.dtype
    assert bits_equal(jax.random.key_data(loaded["['k']"]), jax.random.key_data(keys))


def test_shardings_by_position_function_or_one(tmp_path):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    model = WeightSharingMLP(jax.random.key(0), features=8)
    path = save(tmp_path, "sharded", model)

    by_position = inox_io.load(path, shardings={".l4.weight.value.value": split})
    assert by_position[".l3.weight.value.value"].sharding == split  # a tie is placed once
    assert by_position[".l3.bias.value"].sharding != split

    seen = []
    by_function = inox_io.load(path, shardings=lambda position, leaf: seen.append((position, leaf.shape)) or split)
    assert (".l1.value.weight.value", (8, 8)) in seen and all(x.sharding == split for x in by_function.values())
    assert all(x.sharding == split for x in inox_io.load(path, shardings=split).values())


def test_transforms_apply_and_names_need_a_like(tmp_path):
    path = save(tmp_path, "safetensors", {"w": jnp.ones((2, 3))})

    assert inox_io.load(path, transforms={lambda name: name == "['w']": inox_io.TRANSPOSE})["['w']"].shape == (3, 2)
    with pytest.raises(ValueError, match="names need a like; without one, the file's own positions are loaded"):
        inox_io.load(path, names=inox_io.torch_names)


def test_manager_restores_every_item_without_like(tmp_path):
    model = WeightSharingMLP(jax.random.key(0), features=4)
    with inox_io.CheckpointManager(tmp_path / "run") as manager:
        manager.save(3, {"model": model, "config": {"lr": 0.1}})

    with inox_io.CheckpointManager(tmp_path / "run", read_only=True) as manager:
        restored = manager.restore()

    assert restored["config"] == {"lr": 0.1}
    assert restored["model"][".l2.value.weight.value"] is restored["model"][".l1.value.weight.value"]


# Non-array leaves


def test_differing_statics_are_warned_about_by_path_and_value(tmp_path):
    path = save(tmp_path, "msgpack", {"w": jnp.ones(2), "step": 5, "name": "run"})

    with pytest.warns(UserWarning) as record:
        loaded = inox_io.load(path, {"w": jnp.zeros(2), "step": 0, "name": "run"})

    assert loaded["step"] == 0
    message = str(record[0].message)
    assert "['step'] is 5 in the checkpoint, 0 in like" in message and "statics='file'" in message
    assert "['name']" not in message


@pytest.mark.parametrize("layout", ["safetensors", "sharded"])
def test_statics_file_takes_the_checkpoints_values(tmp_path, layout):
    model = WeightSharingMLP(jax.random.key(0), features=4)
    model.label = "saved"
    path = save(tmp_path, layout, {"model": model, "step": 5, "names": ["a", "b"]})
    like = WeightSharingMLP(jax.random.key(1), features=4)
    like.label = "fresh"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = inox_io.load(path, {"model": like, "step": 0, "names": ["c", "d"]}, statics="file")

    assert loaded["step"] == 5 and loaded["names"] == ["a", "b"] and loaded["model"].label == "saved"
    assert loaded["model"].l1 is loaded["model"].l2 and loaded["model"].l3.weight is loaded["model"].l4.weight
    assert bits_equal(loaded["model"].l3.weight.value.value, model.l3.weight.value.value)


def test_statics_must_be_like_or_file(tmp_path):
    path = save(tmp_path, "msgpack", {"w": jnp.ones(2)})

    with pytest.raises(ValueError, match="statics must be one of 'like', 'file', not 'both'"):
        inox_io.load(path, {"w": jnp.ones(2)}, statics="both")


def test_an_abstract_like_takes_numbers_the_file_holds_as_statics(tmp_path):
    path = save(tmp_path, "safetensors", {"w": jnp.ones(2), "step": 5, "lr": 0.5})
    like = jax.eval_shape(lambda: {"w": jnp.zeros(2), "step": 0, "lr": 0.1})

    loaded = inox_io.load(path, like)

    assert loaded["step"].dtype == like["step"].dtype and int(loaded["step"]) == 5
    assert float(loaded["lr"]) == 0.5

    wrong = {**like, "step": jax.ShapeDtypeStruct((3,), jnp.float32)}
    with pytest.raises(CheckpointError, match=r"\['step'\]: float32\[3\] expected, the file holds the value 5 \(not an array\)"):
        inox_io.load(path, wrong)
