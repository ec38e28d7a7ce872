r"""One process of the multi-host test (``test_multihost.py`` starts two).

Usage:
    python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DIRECTORY

Each process has 2 CPU devices (the test sets ``XLA_FLAGS``); together they form a
mesh of 4. The worker saves the spec's tied model (``models.WeightSharingMLP``)
sharded over all 4 devices to an orbax directory, restores it onto another mesh and
spec, and checks ties, values, placement and that no process holds another's shards.
It also loads a safetensors file (written by process 0 from its local copy) onto the
global sharding, and checks that saving a global array to a single file fails clearly,
and that a process loading slices of a large array from a single file checksums only
the chunks its slices overlap (and finds damage there, not elsewhere).
It prints ``WORKER OK <id>`` at the end.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from pathlib import Path

import inox_io

from inox_io.errors import CheckpointError
from inox_io.formats.payload import SLICE_CHECKS
from models import WeightSharingMLP, assert_tied  # this folder: sys.path[0] when run as a script

FEATURES = 8


def spec(leaf, *axes) -> P:
    return P(*axes[: leaf.ndim])


def globalize(tree, mesh: Mesh, *axes):
    r"""The same tree, each array a global array sharded over the whole mesh."""

    def put(x):
        if not isinstance(x, jax.Array):
            return x
        host = np.asarray(x)
        sharding = NamedSharding(mesh, spec(x, *axes))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def check(restored, expected, *, fully_addressable: bool) -> None:
    assert_tied(restored)

    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        assert got.is_fully_addressable == fully_addressable, got.sharding
        for shard in got.addressable_shards:
            assert shard.device.process_index == jax.process_index()
            np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])


def main(process_id: int, num_processes: int, port: int, directory: Path) -> None:
    # Here, not at import: pytest imports this module (doctests) in its own process.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes

    local = WeightSharingMLP(jax.random.key(0), features=FEATURES)  # the same values on every process
    expected = jax.tree.map(np.asarray, local)

    mesh = Mesh(np.array(jax.devices()), ("x",))
    model = globalize(local, mesh, "x", None)
    assert_tied(model)
    assert not model.l1.weight.value.is_fully_addressable

    # Orbax directory: each process writes its shards; the manifest once.
    path = directory / "ckpt"
    manifest = inox_io.save(path, model)
    assert path.is_dir() and (path / "manifest.json").is_file()
    assert sorted(manifest.arrays) == sorted(inox_io.manifest.tree_arrays(local)[1])

    # Another mesh shape and another spec.
    other = Mesh(np.array(jax.devices()[::-1]).reshape(2, num_processes), ("a", "b"))

    def choose(position, leaf):
        return NamedSharding(other, spec(leaf, None, "b") if leaf.ndim == 2 else P("a"))

    restored = inox_io.load(path, local, shardings=choose)
    check(restored, expected, fully_addressable=False)
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding == choose("", leaf)

    # Abstract like carrying the shardings, P('x', None) -> P(None, 'x') on a 4-device mesh.
    like = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec(x, None, "x"))),
        local,
    )
    check(inox_io.load(path, like), expected, fully_addressable=False)

    # No sharding anywhere: a full copy on this process's default device.
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), local)
    restored = inox_io.load(path, like)
    check(restored, expected, fully_addressable=True)
    assert restored.l1.weight.value.devices() == {jax.local_devices()[0]}

    # Overwrite: replaced once, by process 0, for everyone.
    doubled = jax.tree.map(lambda x: x * 2, model)
    inox_io.save(path, doubled, overwrite=True)
    restored = inox_io.load(path, local, shardings=choose)
    check(restored, jax.tree.map(lambda x: x * 2, expected), fully_addressable=False)

    # Single files hold whole arrays: a global array cannot be saved there...
    with pytest.raises(ValueError, match="spans several processes"):
        inox_io.save(directory / f"global.{process_id}.safetensors", model)

    # ...but one written from a local copy loads onto global shardings, each process
    # reading its own shards from the memory map.
    file = directory / "local.safetensors"
    if process_id == 0:
        inox_io.save(file, local)
    multihost_utils.sync_global_devices("inox_io-test:file-written")
    check(inox_io.load(file, local, shardings=choose), expected, fully_addressable=False)

    # A 4 MiB array in rows over the 4 devices: each process needs half of it, 2 MiB,
    # and checksums those two chunks only, not the whole array.
    big_file, damaged = directory / "big.safetensors", directory / "damaged.safetensors"
    big = np.arange(2**20, dtype=np.float32).reshape(1024, 1024)
    if process_id == 0:
        inox_io.save(big_file, {"w": big})
        data = bytearray(big_file.read_bytes())
        data[-1] ^= 1  # the last row: process 1's half
        damaged.write_bytes(bytes(data))
    multihost_utils.sync_global_devices("inox_io-test:big-written")
    rows = {"w": jax.ShapeDtypeStruct(big.shape, big.dtype, sharding=NamedSharding(mesh, P("x", None)))}
    before = SLICE_CHECKS.value
    loaded = inox_io.load(big_file, rows)["w"]
    assert SLICE_CHECKS.value - before == big.nbytes // num_processes, SLICE_CHECKS.value - before
    for shard in loaded.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), big[shard.index])
    if process_id == num_processes - 1:
        with pytest.raises(CheckpointError, match=r"damaged.safetensors.*\['w'\].*checksum mismatch"):
            inox_io.load(damaged, rows)
    else:
        inox_io.load(damaged, rows)  # its own chunks are intact

    multihost_utils.sync_global_devices("inox_io-test:done")
    print(f"WORKER OK {process_id}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
