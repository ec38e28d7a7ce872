r"""Mistakes a new user makes, each answered by a message that says what to do."""

import jax
import jax.numpy as jnp
import pytest

import inox_io

from models import WeightSharingMLP


@pytest.mark.parametrize("name", ["m.safetensors", "m.msgpack", "m", "m.safetensors.index.json"])
def test_a_missing_parent_directory_is_named_with_the_users_path(tmp_path, name):
    path = tmp_path / "no" / "such" / name

    with pytest.raises(FileNotFoundError) as info:
        inox_io.save(path, {"w": jnp.ones(2)})

    assert str(info.value) == f"{path}: not saved, its parent directory {path.parent} does not exist"
    assert not (tmp_path / "no").exists()


def test_a_parent_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    src = tmp_path / "m.msgpack"
    inox_io.save(src, {"w": jnp.ones(2)})

    with pytest.raises(FileNotFoundError, match=r"m.safetensors: not saved, its parent directory .*file is not a directory"):
        inox_io.convert(src, tmp_path / "file" / "m.safetensors")


def test_a_class_passed_as_like_gets_a_hint(tmp_path):
    path = tmp_path / "m.safetensors"
    inox_io.save(path, WeightSharingMLP(jax.random.key(0), features=4))

    with pytest.raises(TypeError, match=r"like is the class WeightSharingMLP, not a tree; pass an instance, or inox_io.abstract\(WeightSharingMLP, ...\)"):
        inox_io.load(path, WeightSharingMLP)


def test_directory_locked_error_is_public(tmp_path):
    with inox_io.CheckpointManager(tmp_path / "run"):
        with pytest.raises(inox_io.DirectoryLockedError, match="run"):
            inox_io.CheckpointManager(tmp_path / "run")
