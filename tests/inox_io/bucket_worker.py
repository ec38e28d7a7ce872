r"""One process of a job saving to object storage from several processes
(``test_object_store_processes.py`` starts two with :class:`processes.Job`, the
servers of ``object_servers.py`` running in the test's process).

Usage:
    python bucket_worker.py PROCESS_ID NUM_PROCESSES PORT ROOT [ROOT ...]

Each ROOT is a prefix of the test bucket (``s3://inox-test/...``, ``gs://...``). The
state is the spec's tied model (``models.WeightSharingMLP``) sharded over every device
of the job. On the first ROOT, the worker checks, on every process:

* a sharded save, each process uploading its own shards: loads resharded onto another
  mesh, and whole on one device, ties kept; the record names both processes' files;
* a replacement; then failures on process 1 (its upload, its shards' writer): every
  process fails, the replaced checkpoint stays, no generation is left behind;
* a single file written by process 0 alone, loaded by both onto the global sharding,
  each fetching only the byte ranges of its own slices of a large array;
* the orbax layout, each process uploading the chunks of its shards;
* a CheckpointManager on the bucket: async steps with retention, a restore onto another
  mesh, a step failing on process 1 that leaves the others.

On the other ROOTs, only the round trips of the sharded and orbax layouts. It prints ``WORKER OK <id>`` at the end.
"""

from __future__ import annotations

import errno
import sys

import jax
import numpy as np

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

FEATURES = 8


ORIGINALS = {}  # (module, name): the function fail_on replaced


def fail_on(process: int, module, name: str, enabled: bool) -> None:
    r"""Makes :py:`module.name` fail with a full disk on :py:`process` (or restores it)."""

    original = ORIGINALS.setdefault((module, name), getattr(module, name))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    setattr(module, name, full if enabled and jax.process_index() == process else original)


def main(process_id: int, processes: int, port: int, roots: list) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=processes, process_id=process_id,
        initialization_timeout=60,
    )  # fmt: skip

    import pytest

    import inox_io

    from inox_io import distributed
    from inox_io.formats import sharded_dir
    from inox_io.storage import commit, locate
    from inox_io.storage.bucket import bucket
    from models import WeightSharingMLP, assert_tied
    from multihost_worker import check, globalize

    local = WeightSharingMLP(jax.random.key(0), features=FEATURES)
    expected = jax.tree.map(np.asarray, local)
    mesh = Mesh(np.array(jax.devices()), ("x",))
    model = globalize(local, mesh, "x", None)
    other = Mesh(np.array(jax.devices()[::-1]).reshape(2, -1), ("a", "b"))

    def choose(position, leaf):
        return NamedSharding(other, P(None, "b") if leaf.ndim == 2 else P("a"))

    def round_trip(url: str, tree, want) -> None:
        check(inox_io.load(url, local, shardings=choose), want, fully_addressable=False)
        whole = inox_io.load(url, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), local))
        check(whole, want, fully_addressable=True)
        assert_tied(whole)

    def objects(url: str) -> list:
        where = locate(url)
        return bucket(where).keys(where.key)

    for root in roots[1:]:
        inox_io.save(f"{root}/ckpt", model)
        round_trip(f"{root}/ckpt", model, expected)
        inox_io.save(f"{root}/orbax", model, format="orbax")
        round_trip(f"{root}/orbax", model, expected)

    root = roots[0]
    url = f"{root}/ckpt"
    inox_io.save(url, model, metadata={"step": 1})
    round_trip(url, model, expected)
    generation, files, _ = commit.committed(locate(url))
    assert sorted(files) == ["ckpt/manifest.json", "ckpt/shards-00000-of-00002.bin", "ckpt/shards-00001-of-00002.bin"], files
    with pytest.raises(FileExistsError, match=f"{url} exists"):
        inox_io.save(url, model)

    doubled = jax.tree.map(lambda x: x * 2, model)
    twice = jax.tree.map(lambda x: x * 2, expected)
    inox_io.save(url, doubled, overwrite=True)
    round_trip(url, doubled, twice)
    committed = commit.committed(locate(url)).generation

    # A failure on process 1, in its upload then in its layout: every process fails.
    for module, name in [(commit, "upload"), (sharded_dir, "write_pieces")]:
        fail_on(1, module, name, True)
        error = OSError if process_id == 1 else inox_io.CheckpointError
        with pytest.raises(error, match="No space left on device") as info:
            inox_io.save(url, model, overwrite=True)
        if process_id != 1:
            assert "failed on process 1" in str(info.value)
        fail_on(1, module, name, False)
        distributed.barrier("failed")  # process 0 has removed what was uploaded
        assert commit.committed(locate(url)).generation == committed
        assert all(k == locate(url).key or f"/{committed}/" in k for k in objects(url)), objects(url)
        round_trip(url, doubled, twice)

    # Single files: process 0 alone saves, as on a disk; both load.
    file = f"{root}/local.safetensors"
    if process_id == 0:
        inox_io.save(file, local)
    distributed.barrier("file")
    check(inox_io.load(file, local, shardings=choose), expected, fully_addressable=False)
    # A 4 MiB array in rows over the job's devices: each process fetches (and checks)
    # its own half, rounded out to 1 MiB blocks, and the header's block.
    from inox_io.storage.ranges import FETCHED

    big, big_file = np.arange(2**20, dtype=np.float32).reshape(1024, 1024), f"{root}/big.safetensors"
    if process_id == 0:
        inox_io.save(big_file, {"w": big})
    distributed.barrier("big file")
    before = FETCHED.value
    rows = {"w": jax.ShapeDtypeStruct(big.shape, big.dtype, sharding=NamedSharding(mesh, P("x", None)))}
    loaded = inox_io.load(big_file, rows)["w"]
    assert big.nbytes // processes <= FETCHED.value - before <= big.nbytes // processes + 2 * 2**20, FETCHED.value - before
    for shard in loaded.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), big[shard.index])

    # The orbax layout: each array a zarr folder whose chunks the process holding them
    # uploads; orbax's metadata once (a missing chunk would read as zeros: compared).
    orbax_url = f"{root}/orbax"
    inox_io.save(orbax_url, model, format="orbax")
    round_trip(orbax_url, model, expected)
    files = commit.committed(locate(orbax_url)).files
    assert "orbax/arrays/_METADATA" in files and "orbax/manifest.json" in files, files
    assert sum(name.endswith("/.zarray") for name in files) == len(inox_io.inspect(orbax_url).arrays), files

    # The manager: steps saved by both processes, the latest restored onto another mesh.
    manager = inox_io.CheckpointManager(f"{root}/run", max_to_keep=2)
    for step in range(1, 4):
        manager.save(step, {"model": jax.tree.map(lambda x: x + step, model), "data": {"step": step}})
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 3], manager.all_steps()
    fail_on(1, sharded_dir, "write_pieces", True)
    manager.save(4, {"model": model})
    with pytest.raises((OSError, inox_io.CheckpointError), match="No space left on device"):
        manager.wait_until_finished()
    fail_on(1, sharded_dir, "write_pieces", False)
    assert manager.all_steps() == [2, 3], manager.all_steps()
    restored = manager.restore(like={"model": local}, shardings={"model": choose})
    assert restored["data"] == {"step": 3}
    check(restored["model"], jax.tree.map(lambda x: x + 3, expected), fully_addressable=False)
    manager.close()
    reader = inox_io.CheckpointManager(f"{root}/run", read_only=True)
    assert reader.all_steps() == [2, 3]

    distributed.barrier("done")
    print(f"WORKER OK {process_id}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
