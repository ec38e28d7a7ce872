r"""One process of a job of two saving to a bucket in a loop, until it is killed
(``test_object_store_crash.py`` kills the whole job, as a preemption does).

Usage:
    python bucket_saver_worker.py PROCESS_ID NUM_PROCESSES PORT URL FIRST_GENERATION LAYOUT

The state is :func:`crash_worker.make_tree` of each generation in turn (a tie, five
dtypes), its arrays global: split over the job's devices where they divide, replicated
otherwise. Each save replaces the last, in LAYOUT (``sharded`` or ``orbax``), every
process uploading its own shards. Each process prints ``ready`` once the job is up; process 0
``saved <g>`` after each save.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def main(process_id: int, processes: int, port: int, url: str, first: int, layout: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_x64", True)  # the tree's int64 array, exact
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=processes, process_id=process_id,
        initialization_timeout=60,
    )  # fmt: skip

    import inox_io

    from crash_worker import make_tree
    from inox.tree import is_array

    mesh = Mesh(np.array(jax.devices()), ("x",))

    def place(x):
        if not is_array(x):
            return x
        split = x.ndim and x.shape[0] % mesh.size == 0
        sharding = NamedSharding(mesh, P("x") if split else P())
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    print("ready", flush=True)
    generation = first
    while True:
        state = jax.tree.map(place, make_tree(generation))
        inox_io.save(url, state, overwrite=True, metadata={"generation": str(generation)}, format=layout)
        if process_id == 0:
            print(f"saved {generation}", flush=True)
        generation += 1


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
