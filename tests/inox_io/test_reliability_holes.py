r"""The holes of reliability round 2 (issue 16), each attack reproduced: a save deleting
files it does not own, FIFOs hanging the readers, invalid shard names, crafted files
switching their checksums off, readers of a checkpoint being replaced, leftovers of
interrupted saves, long names, clear errors for failing disks, memory of compressed
layouts.
"""

from __future__ import annotations

import json
import os
import threading

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import inox_io

from inox_io.atomic import TEMP_PREFIX

TREE = {"a": jnp.arange(300.0), "b": jnp.ones(300)}
INDEX = "model.safetensors.index.json"


def save_index(folder: Path, tree=TREE, **kwargs) -> Path:
    path = folder / INDEX
    inox_io.save(path, tree, max_shard_size=1500, **kwargs)
    return path


def rewrite_index(path: Path, edit) -> None:
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


# 1. An overwrite deletes only what it can prove is its own


@pytest.mark.parametrize("victim", ["outside", "sibling", "itself"])
def test_index_overwrite_deletes_only_its_own_shards(tmp_path, victim):
    folder, outside = tmp_path / "ckpt", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    path = save_index(folder)
    (outside / "precious.txt").write_text("keep me")
    (folder / "sub").symlink_to(outside)
    inox_io.save(folder / "other.safetensors", {"x": jnp.ones(2)})
    name = {"outside": "sub/precious.txt", "sibling": "other.safetensors", "itself": INDEX}[victim]
    rewrite_index(path, lambda index: index["weight_map"].update({"['a']": name}))

    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)

    assert (outside / "precious.txt").read_text() == "keep me"
    assert inox_io.load(folder / "other.safetensors", {"x": jnp.zeros(2)})["x"].tolist() == [1, 1]
    restored = inox_io.load(path, TREE)
    assert np.array_equal(restored["a"], TREE["a"])


def test_index_overwrite_still_removes_its_old_shards(tmp_path):
    path = save_index(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)
    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)
    assert len({p.name for p in tmp_path.iterdir()}) == len(before)


# 2. Readers open only regular files: a FIFO never hangs them


def refused_at_once(read, fifos) -> str:
    r"""Runs :py:`read`, which must raise CheckpointError; if it blocks (on a FIFO),
    the FIFOs are opened for writing to release it, and the test fails."""

    outcome = {}

    def target():
        try:
            read()
            outcome["error"] = None
        except Exception as e:
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)  # a hang guard, not a timing: a refusal takes milliseconds
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(60)
        pytest.fail("the reader blocked on a FIFO")
    assert isinstance(outcome["error"], inox_io.CheckpointError), outcome["error"]
    return str(outcome["error"])


@pytest.mark.parametrize("suffix", ["safetensors", "msgpack"])
def test_fifo_file_is_refused(tmp_path, suffix):
    path = tmp_path / f"pipe.{suffix}"
    os.mkfifo(path)
    for read in (lambda: inox_io.load(path, TREE), lambda: inox_io.inspect(path), lambda: inox_io.verify(path)):
        assert "a FIFO, not a regular file" in refused_at_once(read, [path])


@pytest.mark.parametrize("which", ["index", "shard"])
def test_fifo_in_an_index_is_refused(tmp_path, which):
    path = save_index(tmp_path)
    fifo = path if which == "index" else tmp_path / "model-00001-of-00002.safetensors"
    fifo.unlink()
    os.mkfifo(fifo)
    assert "a FIFO, not a regular file" in refused_at_once(lambda: inox_io.load(path, TREE), [fifo])


@pytest.mark.parametrize("name", ["manifest.json", "arrays/_METADATA", "arrays/manifest.ocdbt"])
def test_fifo_in_a_directory_is_refused(tmp_path, name):
    path = tmp_path / "ckpt"
    inox_io.save(path, TREE)
    (path / name).unlink()
    os.mkfifo(path / name)
    for read in (lambda: inox_io.load(path, TREE), lambda: inox_io.verify(path)):
        assert "FIFO" in refused_at_once(read, [path / name])


# 7. Invalid shard names


@pytest.mark.parametrize("name", ["a\0b.safetensors", "\ud800.safetensors"])
def test_invalid_shard_name_is_a_checkpoint_error(tmp_path, name):
    path = save_index(tmp_path)
    rewrite_index(path, lambda index: index["weight_map"].update({"['a']": name}))
    with pytest.raises(inox_io.CheckpointError, match="not a valid file name"):
        inox_io.load(path, TREE)
    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)  # and a save replaces it
    assert np.array_equal(inox_io.load(path, TREE)["b"], TREE["b"])
