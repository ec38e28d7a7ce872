r"""The measuring processes that :mod:`benchmarks.run` starts, one per measurement kind.

Each prints one line ``RESULT <json>`` at the end. Timings interleave the methods
within each repetition (rep 1 of every method, then rep 2, ...), so that a slow phase
of this shared machine hurts them all alike rather than one.

.. code-block:: bash

    python -m benchmarks.worker time --case a --size quick --dir /tmp/x
    python -m benchmarks.worker memory --case a --size quick --dir /tmp/x --method raw --op save
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import shutil
import sys
import time

from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from . import system


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


#: How many times a repetition is measured again when the machine reclaimed memory
#: while it ran (see :func:`_measured`).
RETRIES = 5

#: Operations whose fastest time is above this are not measured again: they cannot fit
#: between two of the machine's reclaiming passes (about 2 s apart), whatever happens.
SHORT_SECONDS = 1.0


def _measured(prepare: Callable[[], Any], fn: Callable[[], Any], retries: int) -> Tuple[float, List[float]]:
    r"""The time of :py:`fn()`, after :py:`prepare()`, and the times of the attempts
    that were discarded.

    This virtual machine hands free memory back to its host about 2 s after it is
    freed, in passes of up to a gigabyte (free page reporting). An operation that
    allocates while a pass runs gets memory the host must map again, page by page: a
    0.4 s load of 1 GiB then takes 2 s, whatever it does. When the kernel's count of
    reported memory grows during :py:`fn()`, the measurement says nothing about
    :py:`fn`, and it is prepared and measured again, up to :py:`retries` times (the
    last attempt counts then).
    """

    discarded: List[float] = []
    while True:
        prepare()
        reported = system.memory_reported_kib()
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        disturbed = system.memory_reported_kib() != reported
        del out  # freed outside the timing
        gc.collect()
        if not disturbed or len(discarded) == retries:
            return elapsed, discarded
        discarded.append(elapsed)


class Stopwatch:
    r"""Times the operations of the methods, repetition after repetition, into their
    entries of the results (``entry[op]``: the times kept; ``entry['discarded'][op]``:
    those of the attempts disturbed by the machine and measured again).

    Only operations that have been fast once (under :data:`SHORT_SECONDS`, warm-up
    included) are measured again. Every method, the baseline included, is treated
    alike, and the discarded attempts are reported.
    """

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.fastest: Dict[Tuple[int, str], float] = {}

    def time(self, entry: Dict[str, Any], op: str, rep: int, prepare: Callable[[], Any], fn: Callable[[], Any]) -> None:
        key = (id(entry), op)
        short = self.fastest.get(key, float("inf")) < SHORT_SECONDS
        elapsed, discarded = _measured(prepare, fn, RETRIES if short else 0)
        self.fastest[key] = min([self.fastest.get(key, float("inf")), elapsed, *discarded])
        if rep >= self.warmup:
            entry[op].append(elapsed)
            entry["discarded"][op] += discarded


def _prime(nbytes: int) -> None:
    r"""Touches, then frees, memory just before a measurement.

    Virtual machines that hand freed memory back to their host (free page reporting)
    make the first touch of that memory slow, and when the host takes it back varies
    from run to run. The measured operation then gets memory freed an instant ago,
    ready to use, as on a machine of its own.
    """

    import numpy as np

    primer = np.ones(min(nbytes, 3 * 2**30), np.uint8)
    del primer


def _before_load(cold: bool, nbytes: int) -> None:
    if cold:
        system.drop_caches()
    _prime(2 * nbytes)


def _rotated(items: List[Any], rep: int) -> List[Any]:
    r"""The methods in a different order at each repetition, so that none always runs
    right after the same other one (whose leftovers, such as dirty pages or threads,
    could slow it)."""

    shift = rep % len(items) if items else 0
    return items[shift:] + items[:shift]


def _selected(spec: str, group: str = "all") -> List[str]:
    r"""The methods named (``all``: every one), in table order, of a group: ``orbax``
    (those built on orbax), ``files`` (the others) or ``all``."""

    from .methods import all_names

    names = all_names()
    wanted = names if spec == "all" else spec.split(",")
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {names}")
    if group != "all":
        wanted = [n for n in wanted if ("orbax" in n) == (group == "orbax")]
    return [n for n in names if n in wanted]


def time_case(args: argparse.Namespace) -> Dict[str, Any]:
    r"""Save and load times of every method on one case's data, and disk bytes."""

    from .cases import build
    from .methods import methods

    data, like = build(args.case, args.size), build(args.case, args.size, concrete=False)
    chosen = methods(_selected(args.methods, args.group))
    paths = {m.name: args.dir / f"{m.name}{m.suffix}" for m in chosen}
    out: Dict[str, Any] = {m.name: {"save": [], "load": [], "discarded": {"save": [], "load": []}} for m in chosen}

    def before_save(path: Path) -> None:
        _remove(path)
        system.sync()  # the previous save's deletion is not this save's cost
        _prime(2 * data.flat_nbytes)

    stopwatch = Stopwatch(args.warmup)
    for rep in range(args.warmup + args.reps):
        for m in _rotated(chosen, rep):
            path = paths[m.name]
            stopwatch.time(out[m.name], "save", rep, lambda: before_save(path), lambda: m.save(path, data))
    for m in chosen:
        out[m.name]["disk"] = system.disk_bytes(paths[m.name])
    unique, flat = data.nbytes, data.flat_nbytes
    del data
    gc.collect()

    before_load = functools.partial(_before_load, args.cold, flat)
    for rep in range(args.warmup + args.reps):
        for m in _rotated(chosen, rep):
            path = paths[m.name]
            stopwatch.time(out[m.name], "load", rep, before_load, lambda: m.load(path, like))
    return {"methods": out, "unique_bytes": unique, "flat_bytes": flat, "order": _selected(args.methods)}


def time_sharded(args: argparse.Namespace) -> Dict[str, Any]:
    r"""Load times onto shardings over every (forced host) device."""

    import jax
    import numpy as np

    from .cases import build
    from .methods import methods, sharding_for

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
    choose = sharding_for(mesh)
    like = build(args.case, args.size, concrete=False)
    # The baseline and inox_io only: the other libraries load onto shardings no faster
    # than onto one device, and orbax takes minutes for case b.
    chosen = [m for m in methods(_selected(args.methods, args.group)) if m.sharded and m.name != "orbax"]
    out: Dict[str, Any] = {m.name: {"load_sharded": [], "discarded": {"load_sharded": []}} for m in chosen}
    stopwatch, before_load = Stopwatch(args.warmup), functools.partial(_before_load, args.cold, like.flat_nbytes)
    for rep in range(args.warmup + args.reps):
        for m in _rotated(chosen, rep):
            path = args.dir / f"{m.name}{m.suffix}"
            stopwatch.time(out[m.name], "load_sharded", rep, before_load, lambda: m.load(path, like, choose))
    return {"methods": out, "devices": len(jax.devices())}


def memory(args: argparse.Namespace) -> Dict[str, Any]:
    r"""The peak resident memory of one save or one load, above an idle process that
    imported JAX and the method's library.

    A save's process holds the model before it starts: what the save uses is the
    model's bytes plus its peak above the process just before (which leaves out what
    building the random model left behind in the allocator)."""

    import jax
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend started
    idle_jax = system.current_rss()

    from .cases import build
    from .methods import methods

    (m,) = methods([args.method])
    if "orbax" in m.name:
        import orbax.checkpoint  # noqa: F401  (a fixed cost, not the operation's)
    path = args.dir / f"{m.name}{m.suffix}"
    gc.collect()
    idle = system.current_rss()

    if args.op == "save":
        data = build(args.case, args.size)
        model = data.nbytes
        path = args.dir / f"memory-{m.name}{m.suffix}"
        _remove(path)
        gc.collect()
        system.reset_peak()
        before = system.current_rss()  # the model, and what building it left behind
        m.save(path, data)
        peak = system.peak_rss()
        _remove(path)
    else:
        like = build(args.case, args.size, concrete=False)
        model = like.nbytes
        system.drop_caches()
        system.reset_peak()
        before = system.current_rss()
        arrays = m.load(path, like)
        peak = system.peak_rss()
        del arrays
    return {"idle_jax": idle_jax, "idle": idle, "before": before, "peak": peak, "model_bytes": model}


def async_save(args: argparse.Namespace) -> Dict[str, Any]:
    r"""Case d: how long an asynchronous save blocks its caller, against the full save
    and against a synchronous save, of case a's data."""

    import inox_io

    from .cases import build

    data = build("a", args.size)
    how = "inox_io.CheckpointManager(async_save=True)"
    out: Dict[str, Any] = {"sync": [], "blocked": [], "total": [], "how": how}

    for rep in range(args.warmup + args.reps):
        for mode in ("sync", "async"):
            folder = args.dir / f"manager-{mode}"
            _remove(folder)
            system.sync()
            with inox_io.CheckpointManager(folder, async_save=mode == "async") as manager:
                start = time.perf_counter()
                manager.save(1, {"model": data.tree})
                blocked = time.perf_counter() - start
                manager.wait_until_finished()
                total = time.perf_counter() - start
            _remove(folder)
            if rep < args.warmup:
                continue
            if mode == "sync":
                out["sync"].append(total)
            else:
                out["blocked"].append(blocked)
                out["total"].append(total)
    return out


KINDS = {"time": time_case, "sharded": time_sharded, "memory": memory, "async": async_save}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--case", default="a")
    parser.add_argument("--size", default="quick")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--methods", default="all")
    parser.add_argument(
        "--group",
        choices=["all", "files", "orbax"],
        default="all",
        help="only the methods built on orbax, or only the others: orbax leaves threads "
        "behind that would slow the measurements that follow its own",
    )
    parser.add_argument("--method")
    parser.add_argument("--op", choices=["save", "load"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="empty the page cache before each load")
    args = parser.parse_args(argv)
    result = KINDS[args.kind](args)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
