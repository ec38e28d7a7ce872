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


@pytest.fixture(autouse=True)
def orbax_directories(monkeypatch):
    r"""This file tests the orbax layout: new directories get it here, not the
    sharded layout that takes them by default (test_sharded_dir.py)."""

    monkeypatch.setattr(inox_io.formats, "FORMATS", [f for f in inox_io.formats.FORMATS if f.name != "sharded"])


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


# Checksums (section 6 of docs/format.md): recorded by saves in one process.

CHECKSUMMED = {
    "f32": jnp.arange(6.0).reshape(2, 3),
    "bf16": jnp.arange(4, dtype=jnp.bfloat16),
    "uint4": jnp.arange(8, dtype=jnp.uint4),  # stored widened: the checksum is of the manifest's bytes
    "e4m3": jnp.linspace(-2, 2, 5).astype(ml_dtypes.float8_e4m3),
    "f64": np.linspace(0, 1, 7),
    "big_endian": np.arange(5, dtype=">i4"),
    "transposed": np.arange(6, dtype=np.int16).reshape(2, 3).T,
    "scalar": np.float32(2.5),
    "empty": jnp.zeros((0, 3)),
    "key": jax.random.key(7),
}


def corrupt(path, key: str, byte: int = 5) -> None:
    r"""Flips one bit of one byte of a stored array, keeping manifest.json.

    The entries are zarr chunks, zstd-compressed, inside tensorstore's OCDBT files: a
    byte flipped in a data file either breaks decompression (tensorstore reports it,
    which test_truncated_data_is_reported covers) or, at best, changes sizes the OCDBT
    index records. The damage a checksum exists for is the other kind: a well-formed
    checkpoint holding different values. So the entries are rewritten through orbax
    itself, one byte changed, beside the old manifest: what a silently corrupted
    (or swapped) array looks like to every check but the checksum.
    """

    import orbax.checkpoint as ocp

    arrays = (path / "arrays").absolute()
    names = list(ocp.PyTreeCheckpointHandler().metadata(arrays).tree)
    args = {name: ocp.RestoreArgs(restore_type=np.ndarray) for name in names}
    stored = ocp.PyTreeCheckpointer().restore(arrays, args=ocp.args.PyTreeRestore(restore_args=args))
    x = np.array(stored[orbax_name(key)])
    x.view(np.uint8).reshape(-1)[byte] ^= 0x01
    stored[orbax_name(key)] = x
    shutil.rmtree(arrays)
    ocp.PyTreeCheckpointer().save(arrays, stored)


def test_single_process_save_records_checksums(tmp_path):
    directory = inox_io.save(tmp_path / "ckpt", CHECKSUMMED)
    file = inox_io.save(tmp_path / "a.safetensors", CHECKSUMMED)

    assert list(directory.arrays) == list(file.arrays)
    for key, info in inox_io.inspect(tmp_path / "ckpt").arrays.items():
        assert info.crc32 is not None and info.crc32 == file.arrays[key].crc32, key
    assert directory.arrays["['empty']"].crc32 == "00000000"

    restored = inox_io.load(tmp_path / "ckpt", CHECKSUMMED)
    for key, x in CHECKSUMMED.items():
        np.testing.assert_array_equal(bits(restored[key]), bits(x), err_msg=key)
    assert inox_io.verify(tmp_path / "ckpt")


@pytest.mark.parametrize("key", ["f32", "uint4", "f64", "key"])
def test_changed_byte_is_detected(tmp_path, key):
    inox_io.save(tmp_path / "ckpt", CHECKSUMMED)
    corrupt(tmp_path / "ckpt", f"['{key}']", byte=1)
    path = str(tmp_path / "ckpt")

    with pytest.raises(inox_io.CheckpointError, match=rf"{path}: \['{key}'\]: checksum mismatch \(corrupted data\)"):
        inox_io.load(tmp_path / "ckpt", CHECKSUMMED)
    with pytest.raises(inox_io.CheckpointError, match=rf"damaged:\n  \['{key}'\]: checksum mismatch"):
        inox_io.verify(tmp_path / "ckpt")
    with pytest.raises(inox_io.CheckpointError, match=rf"damaged, not converted:\n  \['{key}'\]: checksum mismatch"):
        inox_io.convert(tmp_path / "ckpt", tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()

    # The other arrays alone load; verify=False loads the damaged one as it is.
    others = {k: v for k, v in CHECKSUMMED.items() if k != key}
    with pytest.warns(UserWarning, match="loaded partially"):
        inox_io.load(tmp_path / "ckpt", others, strict=False)
    restored = inox_io.load(tmp_path / "ckpt", CHECKSUMMED, verify=False)
    assert not np.array_equal(bits(restored[key]), bits(CHECKSUMMED[key]))


def test_names_path_verifies_too(tmp_path):
    inox_io.save(tmp_path / "ckpt", CHECKSUMMED)
    corrupt(tmp_path / "ckpt", "['f32']")

    with pytest.raises(inox_io.CheckpointError, match=r"\['f32'\]: checksum mismatch"):
        inox_io.load(tmp_path / "ckpt", CHECKSUMMED, transforms={"['f32']": lambda x: x})


@pytest.mark.parametrize("reason", [None, "saved by 2 processes, none holding every array whole"])
def test_checkpoints_without_checksums(tmp_path, reason):
    import json

    inox_io.save(tmp_path / "ckpt", CHECKSUMMED)
    file = tmp_path / "ckpt" / "manifest.json"
    manifest = json.loads(file.read_text())
    for entry in manifest["arrays"].values():
        entry["crc32"] = None  # as written before checksums, or crafted
    if reason is not None:
        manifest["no_checksums"] = reason  # as saves across processes write
    file.write_text(json.dumps(manifest))
    corrupt(tmp_path / "ckpt", "['f32']")

    assert all(info.crc32 is None for info in inox_io.inspect(tmp_path / "ckpt").arrays.values())
    if reason is None:  # a null nothing explains is refused: it may be crafted
        with pytest.raises(inox_io.CheckpointError, match="without checksum"):
            inox_io.load(tmp_path / "ckpt", CHECKSUMMED)
        with pytest.raises(inox_io.CheckpointError, match="no checksum"):
            inox_io.verify(tmp_path / "ckpt")
    restored = inox_io.load(tmp_path / "ckpt", CHECKSUMMED, verify=reason is not None)  # nothing to check against
    assert not np.array_equal(restored["f32"], CHECKSUMMED["f32"])
    if reason is not None:
        assert inox_io.verify(tmp_path / "ckpt").no_checksums == reason


def test_sharded_load_verifies(tmp_path):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:8]), ("x",))
    rows = NamedSharding(mesh, P("x"))
    tree = {"w": jax.device_put(jnp.arange(64.0).reshape(16, 4), rows), "keys": jax.random.split(jax.random.key(0), 8)}
    shardings = {"w": rows, "keys": rows}
    inox_io.save(tmp_path / "ckpt", tree)

    restored = inox_io.load(tmp_path / "ckpt", tree, shardings=shardings)
    assert restored["w"].sharding == rows and len(restored["w"].addressable_shards) == 8
    np.testing.assert_array_equal(restored["w"], tree["w"])

    corrupt(tmp_path / "ckpt", "['w']", byte=200)  # element 50: row 12, in the shard of device 6
    with pytest.raises(inox_io.CheckpointError, match=r"\['w'\]: checksum mismatch \(corrupted data\)"):
        inox_io.load(tmp_path / "ckpt", tree, shardings=shardings)
    restored = inox_io.load(tmp_path / "ckpt", tree, shardings=shardings, verify=False)
    assert restored["w"].sharding == rows
