r"""The orbax directory format: layout, atomic replacement, dtypes, damage."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import os
import pytest
import shutil

import inox.nn as nn
import inox_io

from inox_io.atomic import TEMP_PREFIX
from inox_io.formats import format_for
from inox_io.formats.orbax_dir import orbax_name


def bits(x) -> np.ndarray:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = np.asarray(x)
    return x.view(np.uint8) if x.dtype.itemsize == 1 else x


def test_paths_choose_the_format(tmp_path):
    assert format_for(tmp_path / "ckpt").name == "orbax"
    assert format_for(tmp_path).name == "orbax"  # an existing directory
    assert format_for(tmp_path / "a.safetensors").name == "safetensors"
    assert format_for(tmp_path / "a.msgpack").name == "msgpack"
    (tmp_path / "odd.safetensors").mkdir()
    assert format_for(tmp_path / "odd.safetensors").name == "safetensors"  # the suffix wins
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        format_for(tmp_path / "model.pt")


def test_layout(tmp_path):
    p = nn.Parameter(jnp.ones(3))
    tree = nn.Scope(a=nn.Reference("p", p), b=nn.Reference("p", p), name="demo")
    manifest = inox_io.save(tmp_path / "ckpt", tree, metadata={"step": "3"})

    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporaries left
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["arrays", "manifest.json"]
    text = (tmp_path / "ckpt" / "manifest.json").read_text()
    assert inox_io.Manifest.from_json(text, source="") == manifest
    assert inox_io.inspect(tmp_path / "ckpt").metadata == {"step": "3"}

    restored = inox_io.load(tmp_path / "ckpt", tree)
    assert restored.a is restored.b and restored.name == "demo"


def test_dtypes_and_odd_keys(tmp_path):
    tree = {
        "f32": jnp.arange(6.0).reshape(2, 3),
        "bf16": jnp.arange(4, dtype=jnp.bfloat16),
        "bool": jnp.array([True, False]),
        "int4": jnp.arange(-4, 4, dtype=jnp.int4),
        "uint4": jnp.arange(8, dtype=jnp.uint4),  # tensorstore lacks it: stored widened
        "e4m3": jnp.linspace(-2, 2, 5).astype(ml_dtypes.float8_e4m3),  # stored as bits
        "e4m3fn": jnp.linspace(-2, 2, 5).astype(jnp.float8_e4m3fn),
        "f64": np.linspace(0, 1, 7),  # host arrays stay exact without jax_enable_x64
        "scalar": np.float32(2.5),
        "empty": jnp.zeros((0, 3)),  # orbax refuses empty arrays: the manifest suffices
        "key": jax.random.key(7),
        "a/b c%é": jnp.ones(2),
    }
    inox_io.save(tmp_path / "ckpt", tree)

    restored = inox_io.load(tmp_path / "ckpt", tree)
    for key, x in tree.items():
        assert restored[key].dtype == x.dtype and restored[key].shape == np.shape(x), key
        np.testing.assert_array_equal(bits(restored[key]), bits(x), err_msg=key)
    assert isinstance(restored["f64"], np.ndarray)

    assert orbax_name("['a/b c%é']") == "['a%2Fb c%25%C3%A9']"
    assert inox_io.verify(tmp_path / "ckpt")


def test_convert_both_ways(tmp_path):
    tree = {"w": jnp.arange(8.0).reshape(2, 4), "u": jnp.arange(3, dtype=jnp.uint4), "k": jax.random.key(1)}
    inox_io.save(tmp_path / "a.safetensors", tree)

    inox_io.convert(tmp_path / "a.safetensors", tmp_path / "ckpt")
    inox_io.convert(tmp_path / "ckpt", tmp_path / "b.msgpack")

    for path in ("ckpt", "b.msgpack"):
        restored = inox_io.load(tmp_path / path, tree)
        for key, x in tree.items():
            np.testing.assert_array_equal(bits(restored[key]), bits(x))


def test_no_arrays(tmp_path):
    inox_io.save(tmp_path / "ckpt", {"act": "relu"})
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["manifest.json"]
    assert inox_io.load(tmp_path / "ckpt", {"act": "gelu"}) == {"act": "gelu"}


def test_overwrite_replaces_whole_checkpoint(tmp_path):
    inox_io.save(tmp_path / "ckpt", {"a": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        inox_io.save(tmp_path / "ckpt", {"a": jnp.zeros(2)})

    inox_io.save(tmp_path / "ckpt", {"a": jnp.zeros(2)}, overwrite=True)

    assert list(inox_io.inspect(tmp_path / "ckpt").arrays) == ["['a']"]
    np.testing.assert_array_equal(inox_io.load(tmp_path / "ckpt", {"a": jnp.ones(2)})["a"], np.zeros(2))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_empty_directory_is_a_fine_target(tmp_path):
    inox_io.save(tmp_path, {"a": jnp.ones(2)})
    assert sorted(os.listdir(tmp_path)) == ["arrays", "manifest.json"]


def test_never_replaces_what_is_not_a_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")

    for name in ("data", "file"):
        with pytest.raises(FileExistsError, match="not an inox_io checkpoint"):
            inox_io.save(tmp_path / name, {"a": jnp.ones(2)}, overwrite=True)

    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"
    assert (tmp_path / "file").read_text() == "keep me too"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(TEMP_PREFIX)]


def test_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="abstract"):
        inox_io.save(tmp_path / "ckpt", {"a": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(FileNotFoundError):
        inox_io.save(tmp_path / "missing" / "ckpt", {"a": jnp.ones(2)})
    assert os.listdir(tmp_path) == []


def test_unfinished_save_is_not_a_checkpoint(tmp_path):
    inox_io.save(tmp_path / "ckpt", {"a": jnp.ones(2)})
    (tmp_path / "ckpt" / "manifest.json").unlink()  # as if killed before the manifest

    with pytest.raises(inox_io.CheckpointError, match="no manifest.json"):
        inox_io.load(tmp_path / "ckpt", {"a": jnp.ones(2)})


def test_missing_or_damaged_arrays(tmp_path):
    tree = {"a": jnp.arange(4.0), "b": jnp.arange(3.0)}
    inox_io.save(tmp_path / "ckpt", tree)
    shutil.rmtree(tmp_path / "ckpt" / "arrays")

    with pytest.raises(inox_io.CheckpointError, match="arrays/ is not a readable orbax checkpoint"):
        inox_io.load(tmp_path / "ckpt", tree)
    with pytest.raises(inox_io.CheckpointError, match="damaged"):
        inox_io.verify(tmp_path / "ckpt")


def test_manifest_and_arrays_disagree(tmp_path):
    inox_io.save(tmp_path / "ckpt", {"a": jnp.arange(4.0)})
    inox_io.save(tmp_path / "other", {"a": jnp.arange(5.0)})
    shutil.rmtree(tmp_path / "ckpt" / "arrays")
    shutil.copytree(tmp_path / "other" / "arrays", tmp_path / "ckpt" / "arrays")

    with pytest.raises(inox_io.CheckpointError, match=r"\['a'\]: arrays/ holds float32\[5\]"):
        inox_io.load(tmp_path / "ckpt", {"a": jnp.zeros(4)})


def test_truncated_data_is_reported(tmp_path):
    tree = {"a": jnp.arange(4096.0).reshape(64, 64)}
    inox_io.save(tmp_path / "ckpt", tree)
    data = [p for p in (tmp_path / "ckpt" / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"]
    biggest = max(data, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])

    with pytest.raises(inox_io.CheckpointError, match="arrays/ could not be read"):
        inox_io.load(tmp_path / "ckpt", tree)
    with pytest.raises(inox_io.CheckpointError, match=r"damaged:\n  \['a'\]: arrays/ could not be read"):
        inox_io.verify(tmp_path / "ckpt")
