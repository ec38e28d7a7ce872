r"""The sharded directory layout (``inox_io/formats/sharded_dir.py``): one process with
8 CPU devices here; 2 and 4 processes in ``sharded_worker.py``."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from pathlib import Path

import inox_io

from inox_io.formats import format_for, format_named
from inox_io.formats.sharded_dir import CHUNK_BYTES, READS

from models import WeightSharingMLP, assert_tied, assert_trees_bits_equal, dtype_zoo, seed_model
from processes import Job

FIXTURES = Path(__file__).parents[2] / "fixtures"
WORKER = Path(__file__).with_name("sharded_worker.py")


def mesh8() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]), ("x",))


def mesh4() -> Mesh:
    return Mesh(np.array(jax.devices()[4:8]).reshape(2, 2), ("a", "b"))


def rows(mesh: Mesh, leaf) -> NamedSharding:
    return NamedSharding(mesh, P(mesh.axis_names[0]) if leaf.ndim else P())


def sharded_model() -> WeightSharingMLP:
    model = WeightSharingMLP(jax.random.key(0), features=16)
    return jax.tree.map(lambda x: jax.device_put(x, rows(mesh8(), x)), model)


def edit_manifest(path: Path, edit) -> None:
    data = json.loads((path / "manifest.json").read_text())
    edit(data)
    (path / "manifest.json").write_text(json.dumps(data))


def test_directories_choose_the_layout(tmp_path):
    assert format_for(tmp_path / "new").name == "sharded"
    assert format_for(tmp_path).name == "sharded"  # an empty directory: a new save's target
    inox_io.save(tmp_path / "orbax", {"a": np.ones(2)}, format="orbax")
    inox_io.save(tmp_path / "sharded", {"a": np.ones(2)})
    assert format_for(tmp_path / "orbax").name == "orbax"  # its manifest names no layout
    assert format_for(tmp_path / "sharded").name == "sharded"
    assert format_named("sharded").collective
    with pytest.raises(ValueError, match="format 'orbax' writes checkpoint directories"):
        inox_io.save(tmp_path / "a.safetensors", {"a": np.ones(2)}, format="orbax")
    with pytest.raises(ValueError, match="unknown item format 'zarr'"):
        inox_io.save(tmp_path / "z", {"a": np.ones(2)}, format="zarr")


def test_every_dtype_and_tie_round_trips(tmp_path):
    zoo = dtype_zoo()
    manifest = inox_io.save(tmp_path / "zoo", zoo)
    file = inox_io.save(tmp_path / "zoo.safetensors", zoo)

    restored = inox_io.load(tmp_path / "zoo", zoo)

    assert_trees_bits_equal(restored, zoo)
    assert restored.first is restored.second and restored.lucky[0] is restored.lucky[1]
    # Whole arrays (one process, one device): the same checksums as the file layouts.
    assert {k: v.crc32 for k, v in manifest.arrays.items()} == {k: v.crc32 for k, v in file.arrays.items()}
    assert inox_io.verify(tmp_path / "zoo") == inox_io.inspect(tmp_path / "zoo")


def test_sharded_model_stores_each_shard_once(tmp_path):
    model = sharded_model()
    manifest = inox_io.save(tmp_path / "m", model)

    data = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert data["layout"] == "sharded" and sorted(data["shards"]) == sorted(manifest.arrays)
    weight = data["shards"][".l3.weight.value.value"]
    assert [s["index"] for s in weight] == [[[2 * i, 2 * i + 2], [0, 16]] for i in range(8)]
    assert all(len(s["crc32"]) == 1 for s in weight)
    # Split along the first axis: the whole array's checksum, as a file records it.
    assert manifest.arrays[".l3.weight.value.value"].crc32 == inox_io.save(tmp_path / "m.msgpack", model).arrays[".l3.weight.value.value"].crc32
    assert os.path.getsize(tmp_path / "m" / "shards-00000-of-00001.bin") == manifest.nbytes

    before = READS.value
    restored = inox_io.load(tmp_path / "m", model)
    assert READS.value - before == manifest.nbytes  # each byte once
    assert_tied(restored)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(model)):
        assert got.sharding == want.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("spec", [P("b"), P(None, "a"), P("a", "b")], ids=str)
def test_reshards_onto_other_meshes(tmp_path, spec):
    model = sharded_model()
    inox_io.save(tmp_path / "m", model)

    def choose(position, leaf):
        return NamedSharding(mesh4(), spec if leaf.ndim == 2 else P("b"))

    restored = inox_io.load(tmp_path / "m", model, shardings=choose)

    assert_tied(restored)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(model)):
        assert got.sharding == choose("", got)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_columns_saved_and_loaded_as_rows(tmp_path):
    x = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    cols = jax.device_put(x, NamedSharding(mesh8(), P(None, "x")))
    manifest = inox_io.save(tmp_path / "c", {"x": cols})
    assert manifest.arrays["['x']"].crc32 is None  # no shard is a run of the array's bytes

    restored = inox_io.load(tmp_path / "c", {"x": cols}, shardings=NamedSharding(mesh4(), P(("a", "b"))))

    np.testing.assert_array_equal(np.asarray(restored["x"]), x)


def test_large_shards_are_checksummed_by_chunk(tmp_path):
    x = np.arange(12 * CHUNK_BYTES // 4, dtype=np.float32).reshape(12, -1)  # a chunk per row
    tree = {"x": jax.device_put(x, NamedSharding(mesh8(), P())), "y": jax.device_put(x, NamedSharding(mesh4(), P("a")))}
    inox_io.save(tmp_path / "l", tree)
    data = json.loads((tmp_path / "l" / "manifest.json").read_text())
    assert [len(s["crc32"]) for s in data["shards"]["['x']"]] == [12]  # replicated: stored once
    assert [len(s["crc32"]) for s in data["shards"]["['y']"]] == [6, 6]

    # Boxes of 4 rows: the second takes rows 4-5 of one shard and 6-7 of the other.
    before = READS.value
    restored = inox_io.load(tmp_path / "l", tree, shardings=NamedSharding(Mesh(np.array(jax.devices()[:3]), ("r",)), P("r")))
    assert READS.value - before == 2 * x.nbytes
    np.testing.assert_array_equal(np.asarray(restored["x"]), x)
    np.testing.assert_array_equal(np.asarray(restored["y"]), x)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_damaged_shard_names_file_and_key(tmp_path):
    model = sharded_model()
    inox_io.save(tmp_path / "m", model)
    data = json.loads((tmp_path / "m" / "manifest.json").read_text())
    shard = data["shards"][".l3.weight.value.value"][5]
    flip(tmp_path / "m" / shard["file"], shard["offset"] + 3)

    with pytest.raises(inox_io.CheckpointError, match=r"\.l3\.weight\.value\.value: checksum mismatch .* in shards-00000-of-00001\.bin"):
        inox_io.load(tmp_path / "m", model)
    with pytest.raises(inox_io.CheckpointError, match=r"damaged:\n  \.l3\.weight\.value\.value: checksum mismatch .* shards-00000-of-00001\.bin"):
        inox_io.verify(tmp_path / "m")
    inox_io.load(tmp_path / "m", model, verify=False)  # asked for
    with pytest.raises(inox_io.CheckpointError, match="checksum mismatch"):
        inox_io.load(tmp_path / "m", model, shardings=NamedSharding(mesh4(), P("b")))


BAD_MANIFESTS = {
    "file outside": (lambda d: d["shards"]["['a']"][0].update(file="../x.bin"), r"\['a'\]: manifest.json: shard file '../x.bin'"),
    "no shards": (lambda d: d["shards"].pop("['a']"), r"\['a'\]: manifest.json: no list of shards"),
    "unknown key": (lambda d: d["shards"].update({"['z']": []}), "not listed in 'arrays'"),
    "overlap": (lambda d: d["shards"]["['a']"][1].update(index=[[0, 4]], offset=0), "overlap"),
    "gap": (lambda d: d["shards"]["['a']"].pop(), "do not cover"),
    "index": (lambda d: d["shards"]["['a']"][0].update(index=[[0, 9]]), "index"),
    "nbytes": (lambda d: d["shards"]["['a']"][0].update(nbytes=3), "nbytes 3"),
    "crc": (lambda d: d["shards"]["['a']"][0].update(crc32=None), "crc32 must list"),
    "layout": (lambda d: d.update(layout="zarr"), None),
    "beyond the file": (lambda d: d["shards"]["['a']"][1].update(offset=10**6), r"shards-00000-of-00001\.bin: \d+ bytes, shards up to byte"),
}


@pytest.mark.parametrize("name", BAD_MANIFESTS)
def test_bad_shard_entries_are_refused(tmp_path, name):
    edit, message = BAD_MANIFESTS[name]
    tree = {"a": jax.device_put(np.arange(8.0, dtype=np.float32), NamedSharding(Mesh(np.array(jax.devices()[:2]), ("x",)), P("x")))}
    inox_io.save(tmp_path / "c", tree)
    edit_manifest(tmp_path / "c", lambda d: edit(d))
    with pytest.raises(inox_io.CheckpointError, match=message or "arrays/"):
        inox_io.load(tmp_path / "c", tree)  # an unknown layout is taken for orbax's, without arrays/


def test_missing_and_truncated_data_files(tmp_path):
    inox_io.save(tmp_path / "c", {"a": np.arange(8.0)})
    file = tmp_path / "c" / "shards-00000-of-00001.bin"
    os.truncate(file, 10)
    with pytest.raises(inox_io.CheckpointError, match=r"shards-00000-of-00001\.bin: 10 bytes"):
        inox_io.load(tmp_path / "c", {"a": np.zeros(8)})
    file.unlink()
    assert list(inox_io.inspect(tmp_path / "c").arrays) == ["['a']"]  # the manifest alone
    with pytest.raises(inox_io.CheckpointError, match=r"\['a'\]: shards-00000-of-00001\.bin: missing"):
        inox_io.load(tmp_path / "c", {"a": np.zeros(8)})


def test_orbax_directories_and_fixtures_still_load(tmp_path):
    model = seed_model()
    inox_io.save(tmp_path / "orbax", model, format="orbax")
    assert sorted(os.listdir(tmp_path / "orbax")) == ["arrays", "manifest.json"]
    assert_trees_bits_equal(inox_io.load(tmp_path / "orbax", model), model)
    inox_io.save(tmp_path / "orbax", model, overwrite=True)  # an existing directory keeps its layout
    assert format_for(tmp_path / "orbax").name == "orbax"
    inox_io.save(tmp_path / "orbax", model, overwrite=True, format="sharded")  # unless told
    assert format_for(tmp_path / "orbax").name == "sharded"
    for name in ("seed.safetensors", "seed.msgpack"):
        assert_trees_bits_equal(inox_io.load(FIXTURES / name, model), model)


def test_overwrite_and_existing_targets(tmp_path):
    inox_io.save(tmp_path / "c", {"a": np.ones(2)})
    with pytest.raises(FileExistsError):
        inox_io.save(tmp_path / "c", {"a": np.ones(2)})
    inox_io.save(tmp_path / "c", {"a": np.zeros(3)}, overwrite=True)
    np.testing.assert_array_equal(inox_io.load(tmp_path / "c", {"a": np.ones(3)})["a"], np.zeros(3))
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no temporary left


def test_manager_items_in_the_sharded_layout(tmp_path):
    model = sharded_model()
    with inox_io.CheckpointManager(tmp_path / "run", item_format="sharded") as manager:
        manager.save(1, {"model": model})
        manager.wait_until_finished()
        restored = manager.restore(1, {"model": model})["model"]
    assert_tied(restored)
    assert format_for(tmp_path / "run" / "1" / "model").name == "sharded"


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_save_and_load(tmp_path, processes):
    job = Job(WORKER, processes, [tmp_path], tmp_path / "logs", name="sharded")
    try:
        codes = job.wait(240)  # ~10 s; a process that fails leaves the others waiting
    finally:
        job.kill()
    outputs = job.outputs()
    for i, (code, output) in enumerate(zip(codes, outputs)):
        if code != 0 or f"WORKER OK {i}" not in output:
            pytest.fail(f"process {i} of {processes} failed (exit code {code}):\n{job.report()}")
