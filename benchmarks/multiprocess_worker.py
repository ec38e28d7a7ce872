r"""One process of :mod:`benchmarks.multiprocess`: saves and loads one case's arrays,
sharded over every device of the job, with each method, and prints ``RESULT <json>``
(process 0: every process's times; the time of an operation is its slowest process's).

.. code-block:: bash

    python -m benchmarks.multiprocess_worker 0 1 0 --case a --size quick --dir /tmp/x

Methods: ``raw`` (each process writes the distinct shards of its devices to a file of
its own with ``writev`` and fsyncs it; reads it back with one ``readinto`` and places
the shards), ``inox_io-sharded`` (the default directory layout), ``inox_io-orbax``
(``format="orbax"``), ``orbax`` (``StandardCheckpointer``, the tie written twice), and
``inox_io-file`` (one safetensors file, which process 0 writes from its host copy of
the whole tree; loads take each process's slices from it, checking the chunks they
overlap), and ``manager-sync`` / ``manager-async``: a step of an :class:`inox_io.CheckpointManager`
holding the tree (sharded layout), saved with ``async_save`` off / on; for the async
one, ``save`` is the time :meth:`~inox_io.CheckpointManager.save` blocks the caller and
``written`` the time until the step is committed.
``load`` restores onto the save's shardings; ``reshard`` onto the devices in reverse
order, grouped as a 2 x N mesh, each array split over all of them along the same axis.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from . import system

METHODS = ["raw", "inox_io-sharded", "inox_io-orbax", "orbax", "inox_io-file", "manager-sync", "manager-async"]


def io_read_bytes() -> int:
    r"""The bytes this process had the storage read for it (``/proc/self/io``)."""

    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))
    except (OSError, StopIteration):
        return -1


class Job:
    r"""The arrays of a case as global arrays, and the ways to save and load them."""

    def __init__(self, case: str, size: str, folder: Path, methods: List[str]):
        import jax
        import numpy as np

        from .cases import build
        from .methods import sharding_for

        self.jax, self.np = jax, np
        self.folder = folder
        devices = jax.devices()
        self.mesh = jax.sharding.Mesh(np.array(devices), ("x",))
        other = jax.sharding.Mesh(np.array(devices[::-1]).reshape(2, -1), ("a", "b"))
        self.choose = sharding_for(self.mesh)

        def reshard(leaf: Any) -> Any:
            spec = self.choose(leaf).spec
            return jax.sharding.NamedSharding(other, jax.sharding.PartitionSpec(*[("a", "b") if s else None for s in spec]))

        self.reshard = reshard
        data = build(case, size)
        self.like = build(case, size, concrete=False)

        def globalize(x: Any) -> Any:
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, self.choose(x), lambda index: host[index])

        self.tree = jax.tree.map(globalize, data.tree)
        self.flat = {k: globalize(v) for k, v in data.flat.items()}
        self.unique = [globalize(x) for x in data.unique]
        self.nbytes = data.nbytes
        self.host_tree = data.tree if "inox_io-file" in methods else None  # the same on every process
        del data

    def path(self, method: str) -> Path:
        return self.folder / (f"{method}.safetensors" if method == "inox_io-file" else method)

    def remove(self, method: str) -> None:
        path = self.path(method)
        if self.jax.process_index() == 0 and path.exists():
            path.unlink() if path.is_file() else shutil.rmtree(path)

    def saver(self, method: str) -> Tuple[Callable[[], Any], Callable[[], None]]:
        r"""What to time for a save, and what finishes it (untimed, but for ``written``):
        a manager is opened before and closed after."""

        if not method.startswith("manager"):
            return (lambda: self.save(method)), (lambda: None)
        import inox_io

        manager = inox_io.CheckpointManager(self.path(method), async_save=method == "manager-async")

        def finish() -> None:
            manager.wait_until_finished()
            manager.close()

        return (lambda: manager.save(0, {"model": self.tree}, force=True)), finish

    def save(self, method: str) -> None:
        import inox_io

        path = self.path(method)
        if method == "raw":
            self.raw_save(path)
        elif method == "inox_io-sharded":
            inox_io.save(path, self.tree)
        elif method == "inox_io-orbax":
            inox_io.save(path, self.tree, format="orbax")
        elif method == "inox_io-file":
            if self.jax.process_index() == 0:
                inox_io.save(path, self.host_tree)
            self.barrier("file-written")
        else:
            import orbax.checkpoint as ocp

            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save(path.absolute(), self.flat)
            checkpointer.wait_until_finished()

    def load(self, method: str, sharding: Callable[[Any], Any]) -> Any:
        import inox_io

        path = self.path(method)
        if method == "raw":
            return self.raw_load(path, sharding)
        if method.startswith("inox_io"):
            return self.jax.block_until_ready(inox_io.load(path, self.like.tree, shardings=lambda p, leaf: sharding(leaf)))
        if method.startswith("manager"):
            manager = inox_io.CheckpointManager(path, read_only=True)
            restored = manager.restore(0, like={"model": self.like.tree}, shardings={"model": lambda p, leaf: sharding(leaf)})
            return self.jax.block_until_ready(restored)
        import orbax.checkpoint as ocp

        targets = {k: self.jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding(x)) for k, x in self.like.flat.items()}
        return self.jax.block_until_ready(ocp.StandardCheckpointer().restore(path.absolute(), targets))

    def local_shards(self, like: List[Any], sharding: Callable[[Any], Any]) -> List[List[Any]]:
        r"""Per array: its distinct boxes on this process's devices, each with its devices."""

        out = []
        for x in like:
            boxes: Dict[Any, List[Any]] = {}
            for device, index in sharding(x).addressable_devices_indices_map(x.shape).items():
                boxes.setdefault(tuple((s.start, s.stop) for s in index), []).append((device, index))
            out.append(list(boxes.values()))
        return out

    def raw_save(self, path: Path) -> None:
        np = self.np
        if self.jax.process_index() == 0:
            path.mkdir()
        self.barrier("raw-dir")
        views = []
        for x, boxes in zip(self.unique, self.local_shards(self.unique, self.choose)):
            data = {shard.device: shard.data for shard in x.addressable_shards}
            for holders in boxes:  # in the order raw_load reads them
                views.append(memoryview(np.asarray(data[holders[0][0]]).reshape(-1).view(np.uint8)))
        fd = os.open(path / f"{self.jax.process_index()}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            while views:
                written = os.writev(fd, views[:1024])
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if written:
                    views[0] = views[0][written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.barrier("raw-written")

    def raw_load(self, path: Path, sharding: Callable[[Any], Any]) -> Any:
        np, jax = self.np, self.jax
        file = path / f"{jax.process_index()}.bin"
        raw = np.empty(os.path.getsize(file) + 64, np.uint8)
        buffer = raw[-raw.ctypes.data % 64 :][: os.path.getsize(file)]
        with open(file, "rb", buffering=0) as f:
            view, done = memoryview(buffer), 0
            while done < len(buffer):
                done += f.readinto(view[done:])
        hosts, devices, offset = [], [], 0
        groups = self.local_shards(self.like.unique, sharding)
        for x, boxes in zip(self.like.unique, groups):
            itemsize = np.dtype(x.dtype).itemsize
            for holders in boxes:
                index = holders[0][1]
                shape = tuple(len(range(*s.indices(n))) for s, n in zip(index, x.shape))
                size = int(np.prod(shape)) * itemsize
                host = buffer[offset : offset + size].view(x.dtype).reshape(shape)
                offset += size
                for device, _ in holders:
                    hosts.append(host)
                    devices.append(device)
        placed = iter(jax.device_put(hosts, devices))
        out = []
        for x, boxes in zip(self.like.unique, groups):
            shards = [next(placed) for holders in boxes for _ in holders]
            out.append(jax.make_array_from_single_device_arrays(x.shape, sharding(x), shards))
        return jax.block_until_ready(out)

    def barrier(self, what: str) -> None:
        from inox_io import distributed

        distributed.barrier(what)


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multiprocess_worker")
    parser.add_argument("process", type=int)
    parser.add_argument("processes", type=int)
    parser.add_argument("port", type=int)
    parser.add_argument("--case", default="a")
    parser.add_argument("--size", default="quick")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)

    import jax

    if args.processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.processes, process_id=args.process)

    from inox_io import distributed
    from inox_io.formats.payload import SLICE_CHECKS
    from inox_io.formats.sharded_dir import READS

    methods = [m for m in METHODS if m in args.methods.split(",")]
    job = Job(args.case, args.size, args.dir, methods)
    counted = lambda: READS.value + SLICE_CHECKS.value  # each method moves one of them
    times: Dict[str, Dict[str, List[float]]] = {m: {"save": [], "written": [], "load": [], "reshard": []} for m in methods}
    reads: Dict[str, Dict[str, int]] = {}

    def timed(fn: Callable[[], Any]) -> float:
        distributed.barrier("start")
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        del out
        return max(distributed.gather("time", elapsed))  # the slowest process's

    for rep in range(args.reps + 1):  # the first is a warm-up
        for m in methods[rep % len(methods) :] + methods[: rep % len(methods)]:
            job.remove(m)
            save, finish = job.saver(m)
            system.sync()
            start = time.perf_counter()
            elapsed = timed(save)
            finish()
            written = max(distributed.gather("written", time.perf_counter() - start))
            if rep:
                times[m]["save"].append(elapsed)
                times[m]["written"].append(written)
        for op, sharding in (("load", job.choose), ("reshard", job.reshard)):
            for m in methods:
                if args.cold and jax.process_index() == 0:
                    system.drop_caches()
                before, io_before = counted(), io_read_bytes()
                elapsed = timed(lambda: job.load(m, sharding))
                if rep:
                    times[m][op].append(elapsed)
                if op == "reshard":
                    reads[m] = {"counted": counted() - before, "io": io_read_bytes() - io_before}

    # The bytes of the target shards of this process's reshard, for the bytes read.
    needed = 0
    for x, boxes in zip(job.like.unique, job.local_shards(job.like.unique, job.reshard)):
        for holders in boxes:
            index = holders[0][1]
            needed += int(job.np.prod([len(range(*s.indices(n))) for s, n in zip(index, x.shape)])) * job.np.dtype(x.dtype).itemsize
    everyone = distributed.gather("reads", {"needed": needed, "reads": reads})
    if jax.process_index() == 0:
        result = {"times": times, "nbytes": job.nbytes, "processes": args.processes, "devices": jax.device_count(), "reads": everyone}
        sys.stdout.write("RESULT " + json.dumps(result) + "\n")
        sys.stdout.flush()
    distributed.barrier("end")
    for m in methods:
        job.remove(m)
    if args.processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
