r"""Directories written by orbax itself (issue 15), made here with orbax: each writer
(StandardCheckpointer, PyTreeCheckpointer with OCDBT on and off, zarr v2 and v3,
CheckpointManager steps and their items) through inspect, load with and without a
like, verify, convert, the command line and a read-only CheckpointManager."""

import json
import os

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import inox_io

from inox_io.cli import main
from inox_io.formats.orbax_native import orbax_names

from models import WeightSharingMLP, assert_tied, assert_trees_bits_equal


def state() -> dict:
    return {
        "params": {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.arange(4, dtype=jnp.int32)},
        "layers": [jnp.full((2,), 7, jnp.bfloat16)],
        "step": 100,
    }


def like() -> dict:
    return {
        "params": {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4, jnp.int32)},
        "layers": [jnp.zeros((2,), jnp.bfloat16)],
        "step": 0,
    }


def assert_state(restored: dict) -> None:
    expected = state()
    assert restored["step"] == expected.pop("step")
    assert_trees_bits_equal({k: v for k, v in restored.items() if k != "step"}, expected)


ARRAYS = ["['layers'][0]", "['params']['b']", "['params']['w']"]


def standard(path: Path) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, state())


def pytree(use_ocdbt: bool, use_zarr3: bool):
    def write(path: Path) -> None:
        handler = ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt, use_zarr3=use_zarr3)
        with ocp.Checkpointer(handler) as checkpointer:
            checkpointer.save(path, args=ocp.args.PyTreeSave(state()))

    return write


WRITERS = {
    "standard": standard,
    "pytree-ocdbt": pytree(True, False),
    "pytree-zarr2": pytree(False, False),
    "pytree-zarr3": pytree(False, True),
    "pytree-ocdbt-zarr3": pytree(True, True),
}


@pytest.fixture(scope="module", params=list(WRITERS))
def written(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp(request.param) / "ckpt"
    WRITERS[request.param](path.absolute())
    return path


def test_inspect(written):
    manifest = inox_io.inspect(written)
    assert sorted(manifest.arrays) == ARRAYS
    assert manifest.arrays["['params']['w']"].dtype == "float32" and manifest.arrays["['params']['w']"].shape == (3, 4)
    assert manifest.arrays["['layers'][0]"].dtype == "bfloat16"
    assert manifest.statics == {"['step']": 100}
    assert manifest.ties == [] and list(manifest.libraries) == ["orbax"]
    assert all(info.crc32 is None for info in manifest.arrays.values()) and "orbax" in manifest.no_checksums


def test_load_with_and_without_like(written):
    restored = inox_io.load(written, like(), statics="file")
    assert_state(restored)

    with pytest.warns(UserWarning, match=r"\['step'\] is 100 in the checkpoint, 0 in like"):
        assert inox_io.load(written, like())["step"] == 0

    flat = inox_io.load(written)
    assert sorted(flat) == sorted(ARRAYS + ["['step']"])
    np.testing.assert_array_equal(np.asarray(flat["['params']['w']"]), np.arange(12.0).reshape(3, 4))
    assert flat["['step']"] == 100

    abstract = jax.eval_shape(like)
    assert inox_io.load(written, abstract)["step"] == 100  # a number the file holds fills an abstract array


def test_a_like_that_does_not_fit(written):
    wrong = like()
    wrong["params"]["w"] = jnp.zeros((4, 3))
    with pytest.raises(inox_io.CheckpointError, match=r"\['params'\]\['w'\]: .*\[4, 3\].*\[3, 4\]"):
        inox_io.load(written, wrong)


def test_verify_and_convert(written, tmp_path):
    assert inox_io.verify(written).no_checksums
    out = tmp_path / "ours.safetensors"
    inox_io.convert(written, out)
    assert inox_io.verify(out).no_checksums is None  # ours: checksummed
    assert_state(inox_io.load(out, like(), statics="file"))


def test_command_line(written, tmp_path, capsys):
    assert main(["inspect", str(written)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{written}: orbax-native, not written by inox_io\nwritten by orbax ")
    assert main(["verify", str(written)]) == 1
    assert "no checksums (written by orbax, which records none" in capsys.readouterr().err
    assert main(["verify", "--allow-unchecked", str(written)]) == 0
    assert main(["convert", str(written), str(tmp_path / "m.msgpack")]) == 0
    assert "(orbax-native) to" in capsys.readouterr().out


def test_ties_come_from_the_like(tmp_path):
    model = WeightSharingMLP(jax.random.key(0), features=4)
    as_dicts: dict = {}  # the module as orbax users save one: nested dicts of its arrays
    for path, leaf in jax.tree_util.tree_leaves_with_path(model):
        *folders, name = orbax_names(jax.tree_util.keystr(path)).split(".")
        node = as_dicts
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = leaf
    path = (tmp_path / "mlp").absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, as_dicts)  # the tied arrays twice

    restored = inox_io.load(path, WeightSharingMLP(jax.random.key(1), features=4), names=orbax_names)
    assert_tied(restored)
    assert_trees_bits_equal(restored, model)


# ---------------------------------------------------------------------------------------
# orbax's CheckpointManager


@pytest.fixture(scope="module")
def orbax_run(tmp_path_factory) -> Path:
    root = (tmp_path_factory.mktemp("orbax") / "run").absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=2, best_fn=lambda m: m["loss"], best_mode="min")
    with ocp.CheckpointManager(root, options=options, item_names=("state", "data")) as manager:
        for step in (1, 2, 3):
            items = ocp.args.Composite(state=ocp.args.StandardSave(state()), data=ocp.args.JsonSave({"next": step * 10}))
            manager.save(step, args=items, metrics={"loss": 1 / step})
    return root


def test_a_step_and_its_items(orbax_run):
    step = orbax_run / "3"
    manifest = inox_io.inspect(step)
    assert sorted(manifest.arrays) == sorted("['state']" + key for key in ARRAYS)
    assert manifest.statics["['data']['next']"] == 30

    restored = inox_io.load(step, {"state": like(), "data": {"next": 0}}, statics="file")
    assert restored["data"] == {"next": 30}
    assert_state(restored["state"])

    item = inox_io.load(step / "state", like(), statics="file")
    assert_state(item)


def test_read_only_manager_lists_and_restores(orbax_run):
    manager = inox_io.CheckpointManager(orbax_run, read_only=True)
    assert manager.all_steps() == [2, 3] and manager.latest_step() == 3
    assert manager.metrics(3) == {"loss": 1 / 3}

    restored = manager.restore(2, like={"state": like()}, statics="file")
    assert restored["data"] == {"next": 20}
    assert_state(restored["state"])

    everything = manager.restore()
    assert everything["data"] == {"next": 30} and sorted(everything["state"]) == sorted(ARRAYS + ["['step']"])


def test_a_writing_manager_refuses_orbax_directory(orbax_run):
    before = sorted(os.listdir(orbax_run))
    with pytest.raises(inox_io.CheckpointError, match=r"an orbax CheckpointManager's directory \(steps 2, 3\).*read_only=True"):
        inox_io.CheckpointManager(orbax_run)
    assert sorted(os.listdir(orbax_run)) == before  # no lock file dropped into it


def test_manager_directory_and_unfinished_save_are_named(orbax_run, tmp_path, capsys):
    with pytest.raises(inox_io.CheckpointError, match=r"the directory of an orbax CheckpointManager \(steps 2, 3\), not a checkpoint: open one step"):
        inox_io.load(orbax_run)

    unfinished = tmp_path / "ckpt.orbax-checkpoint-tmp-1234"
    standard(unfinished.absolute())
    with pytest.raises(inox_io.CheckpointError, match="an unfinished \\(or interrupted\\) orbax save"):
        inox_io.inspect(unfinished)

    assert main(["steps", str(orbax_run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{orbax_run}: a CheckpointManager directory, 2 complete steps (latest 3)")
    assert main(["steps", "--json", str(orbax_run)]) == 0
    records = json.loads(capsys.readouterr().out)["steps"]
    assert [r["step"] for r in records] == [2, 3] and records[1]["metrics"] == {"loss": 1 / 3}
