r"""One process of a multi-process CheckpointManager job (``test_manager_processes.py``
starts them with :class:`processes.Job`).

Usage:
    python manager_worker.py PROCESS_ID NUM_PROCESSES PORT DIRECTORY MODE [STEPS] [FAIL_ON]

The state is the spec's tied model (``models.WeightSharingMLP``), sharded over every
device of the job, and a per-host count; each step maps every weight ``w`` to
``w * 0.5 + 1``, so the state of any step is known exactly (:func:`expected`) and a
resumed run must match it bit for bit.

Modes:
    ``train``: resumes from the latest step (checking it), then trains to STEPS, saving
    every step asynchronously (two kept); stops early, saving, when preempted.
    ``restore``: restores the latest step read-only onto a mesh of another shape.
    ``fail``: saves step 1, then makes step 2 fail on process FAIL_ON (a full disk in
    its writer): every process must fail, and step 1 must stay.

``WORKER_FORMAT`` in the environment sets the manager's ``item_format``.
"""

from __future__ import annotations

import errno
import os
import sys

import jax
import numpy as np

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from pathlib import Path

FEATURES = 8
KEEP = 2


def expected(base, step: int):
    def at(x):
        x = np.asarray(x)
        for _ in range(step):
            x = x * np.float32(0.5) + np.float32(1)
        return x

    return jax.tree.map(at, base)


def main(process_id: int, processes: int, port: int, directory: Path, mode: str, steps: int, fail_on: int) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=processes,
        process_id=process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=int(os.environ.get("WORKER_HEARTBEAT_S", "100")),
    )

    import inox_io

    from models import WeightSharingMLP, assert_tied
    from multihost_worker import check, globalize

    base = WeightSharingMLP(jax.random.key(0), features=FEATURES)
    mesh = Mesh(np.array(jax.devices()), ("x",))
    step_fn = jax.jit(lambda tree: jax.tree.map(lambda x: x * 0.5 + 1, tree))

    if mode == "restore":
        other = Mesh(np.array(jax.devices()[::-1]).reshape(-1, 2), ("a", "b"))
        manager = inox_io.CheckpointManager(directory, read_only=True)
        step = manager.latest_step()
        shardings = {"model": lambda position, leaf: NamedSharding(other, P(*("b", "a")[: leaf.ndim]))}
        restored = manager.restore(step, {"model": base, "count": {"n": np.zeros((), np.int64)}}, shardings=shardings)
        check(restored["model"], expected(base, step), fully_addressable=processes == 1)
        assert int(restored["count"]["n"]) == step and restored["meta"] == {"step": step}
        print(f"RESTORED {step}", flush=True)
        print(f"WORKER OK {process_id}", flush=True)
        return

    item_format = os.environ.get("WORKER_FORMAT")  # the default layout if unset
    manager = inox_io.CheckpointManager(directory, max_to_keep=KEEP, async_save=True, item_format=item_format)
    if process_id == 0:  # before anyone saves: what a killed job left is gone
        assert not [p for p in os.listdir(directory) if p.startswith(".inox_io-tmp-")], "leftovers not removed"
    start = manager.latest_step() or 0
    state = globalize(base, mesh, "x", None)
    if start:
        state = manager.restore(start, {"model": state})["model"]
        check(state, expected(base, start), fully_addressable=False)
        assert_tied(state)
    print(f"RESUMED {start}", flush=True)

    def items(step, state):
        return {"model": state, "count": {"n": np.array(step, np.int64)}, "meta": {"step": step}}

    if mode == "fail":
        assert manager.save(1, items(1, state := step_fn(state)))
        manager.wait_until_finished()
        if process_id == fail_on:
            # A full disk in this process's writer: its shards of the model.
            from inox_io.formats import orbax_dir, sharded_dir

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

            if item_format == "orbax":
                orbax_dir.to_orbax = full
            else:
                sharded_dir.write_pieces = full
        manager.save(2, items(2, state := step_fn(state)))
        try:
            manager.wait_until_finished()
        except (OSError, inox_io.CheckpointError) as e:
            print(f"FAILED AS EXPECTED: {type(e).__name__}: {e}", flush=True)
            assert "No space left on device" in str(e)
        else:
            raise AssertionError("step 2 did not fail")
        assert manager.all_steps() == [1], manager.all_steps()
        restored = manager.restore(1, {"model": state})["model"]
        check(restored, expected(base, 1), fully_addressable=False)
        manager.close()
        if process_id == 0:
            assert sorted(os.listdir(directory)) == [".inox_io-lock", "1"], os.listdir(directory)
        print(f"WORKER OK {process_id}", flush=True)
        return

    for step in range(start + 1, steps + 1):
        state = step_fn(state)
        if manager.reached_preemption(step):
            manager.save(step, items(step, state), force=True)
            manager.wait_until_finished()
            print(f"PREEMPTED {step}", flush=True)
            break
        manager.save(step, items(step, state), metrics={"loss": -step})
        print(f"SAVED {step}", flush=True)
    manager.wait_until_finished()
    final = manager.latest_step()
    print(f"STEPS {manager.all_steps()}", flush=True)
    check(state, expected(base, final), fully_addressable=False)
    manager.close()
    print(f"WORKER OK {process_id}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]), int(args[1]), int(args[2]), Path(args[3]), args[4], int(args[5]) if len(args) > 5 else 0, int(args[6]) if len(args) > 6 else -1)
