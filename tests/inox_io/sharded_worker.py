r"""One process of the sharded directory tests (``test_sharded_dir.py`` starts 2 or 4).

Usage:
    python sharded_worker.py PROCESS_ID NUM_PROCESSES PORT DIRECTORY

Each process has 2 CPU devices. The processes save the spec's tied model sharded over
every device, every dtype (host arrays, which one process writes) and a replicated
array; check that the files and checksums are those of the layout; load onto another
mesh (each process reading little more than its own shards), onto each process's
default device, and a damaged shard of the last process's file, which every process
must refuse, naming the file and key. It prints ``WORKER OK <id>`` at the end.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import numpy as np
import pytest

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from pathlib import Path

import inox_io

from inox_io import distributed
from inox_io.formats.boxes import extents, local_boxes
from inox_io.formats.sharded_dir import CHUNK_BYTES, READS

from models import WeightSharingMLP, assert_tied, assert_trees_bits_equal, dtype_zoo  # this folder: sys.path[0]


def put(x, sharding):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def check(restored, expected) -> None:
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        for shard in got.addressable_shards:
            assert shard.device.process_index == jax.process_index()
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(want)[shard.index])


def main(process_id: int, num_processes: int, port: int, directory: Path) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id, initialization_timeout=60
    )
    last = num_processes - 1
    mesh = Mesh(np.array(jax.devices()), ("x",))
    other = Mesh(np.array(jax.devices()[::-1]).reshape(2, num_processes), ("a", "b"))

    local = WeightSharingMLP(jax.random.key(0), features=16)  # the same values on every process
    model = jax.tree.map(lambda x: put(x, NamedSharding(mesh, P("x") if x.ndim else P())), local)
    zoo = dtype_zoo()  # host arrays: the same on every process, each written by one
    replicated = put(np.arange(64, dtype=np.float32), NamedSharding(mesh, P()))
    tree = {"model": model, "zoo": zoo, "replicated": replicated}

    path = directory / "ckpt"
    manifest = inox_io.save(path, tree)
    data = json.loads((path / "manifest.json").read_text())
    files = {s["file"] for shards in data["shards"].values() for s in shards}
    assert files == {f"shards-{i:05d}-of-{num_processes:05d}.bin" for i in range(num_processes)}, files
    assert all(s["crc32"] for shards in data["shards"].values() for s in shards)
    assert len(data["shards"]["['replicated']"]) == 1  # written once
    assert manifest.arrays["['model'].l3.weight.value.value"].crc32 is not None  # rows: the whole array's too
    assert manifest.arrays == inox_io.inspect(path).arrays  # on every process

    # Onto another mesh: values, ties, placement.
    def choose(position, leaf):
        if position.startswith("['model']"):
            return NamedSharding(other, P(None, "b") if leaf.ndim == 2 else P("a"))
        return None

    restored = inox_io.load(path, tree, shardings=choose)
    assert_tied(restored["model"])
    check(restored["model"], local)
    assert_trees_bits_equal(restored["zoo"], zoo)

    # Each process's default device: a whole copy everywhere.
    whole = {"model": local, "zoo": zoo, "replicated": np.zeros(64, np.float32)}
    restored = inox_io.load(path, whole)
    assert_tied(restored["model"])
    assert_trees_bits_equal(restored["model"], local)
    np.testing.assert_array_equal(restored["replicated"], np.arange(64))

    # A resharded load reads what its shards overlap: rows of one chunk each.
    big = np.arange(4 * num_processes * CHUNK_BYTES // 4, dtype=np.float32).reshape(4 * num_processes, -1)
    inox_io.save(directory / "big", {"big": put(big, NamedSharding(mesh, P("x")))})
    target = NamedSharding(other, P(("a", "b")))
    needed = sum(np.prod(extents(box)) * 4 for box in local_boxes(target, big.shape))
    before = READS.value
    restored = inox_io.load(directory / "big", {"big": big}, shardings=target)
    read = READS.value - before
    assert needed < big.nbytes and read <= 1.1 * needed, (read, needed, big.nbytes)
    check({"big": restored["big"]}, {"big": big})

    # A byte flipped in the last process's file: refused on every process.
    entry = next(
        (key, s) for key, shards in data["shards"].items() for s in shards if s["file"].startswith(f"shards-{last:05d}")
    )
    if process_id == 0:
        with open(path / entry[1]["file"], "r+b") as f:
            f.seek(entry[1]["offset"])
            byte = f.read(1)
            f.seek(entry[1]["offset"])
            f.write(bytes([byte[0] ^ 1]))
    distributed.barrier("damaged")
    message = f"{entry[0]}: checksum mismatch (corrupted data) in shards-{last:05d}-of-{num_processes:05d}.bin"
    with pytest.raises(inox_io.CheckpointError, match=re.escape(message)):
        inox_io.load(path, whole)
    with pytest.raises(inox_io.CheckpointError, match="damaged"):
        inox_io.verify(path)

    distributed.barrier("done")
    print(f"WORKER OK {process_id}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
