r"""A process that saves checkpoints in a loop, to be killed mid-save by the tests.

Run as a script, it is a *zygote*: it imports inox_io once (JAX takes seconds to
import), then, for each JSON command read on stdin, forks a child that saves
generation after generation to one path until it is killed. The child prints its pid
when it is about to save; the zygote reaps it when it dies and prints its wait status.
So the test kills a real process at a random moment for the price of a fork::

    -> {"path": "/tmp/x/model.safetensors", "generation": 7, "options": {}}
    <- go 12345          (from the child)
    (the test sends SIGKILL to 12345 after a random delay)
    <- exit 9            (from the zygote)

If the test goes away (stdin closes), the zygote kills its child and exits; a child
also stops when its zygote is gone, and after :data:`LIFETIME` seconds in any case.

With ``"manager": true`` the child saves steps through :class:`inox_io.CheckpointManager`
with asynchronous saves instead (``path`` is then the manager's directory).

The zygote imports JAX but never starts its runtime; each child starts its own before
it says "go", so forking is safe and the kill clock runs over saves alone.

Also imported by the tests for :func:`make_tree`, :func:`generation_of` and
:func:`own_files`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys

from pathlib import Path
from typing import Any, List

import ml_dtypes
import numpy as np

import inox.nn as nn

LIFETIME = 120  #: seconds; a saver never runs longer, whatever happens to the test


def make_tree(generation: int) -> nn.Scope:
    r"""A small tree, with a tie and five dtypes, whose arrays all hold the generation.

    A checkpoint mixing two saves would hold two different generations.
    """

    g = generation
    shared = nn.Parameter(np.full((3, 4), g, np.float32))
    return nn.Scope(
        a=nn.Reference("w", shared),
        b=nn.Reference("w", shared),
        counts=np.full((5,), g % 128, np.int8),
        half=np.full((2, 2), g % 256, ml_dtypes.bfloat16),  # integers < 256 are exact
        big=np.full((64,), g, np.int64),
        flag=np.full((3,), g % 2 == 1),
        name="crash",
    )


def generation_of(tree: Any) -> int:
    r"""The generation that every array of a loaded :func:`make_tree` holds.

    Raises:
        AssertionError: if the arrays disagree (a mix of two saves) or the tie is lost.
    """

    g = int(np.asarray(tree.big)[0])
    expected = make_tree(g)
    assert tree.a is tree.b, "the tie was not restored"
    for name in ("counts", "half", "big", "flag"):
        found = np.asarray(getattr(tree, name))
        assert np.array_equal(found, getattr(expected, name)), f"{name} holds {found}, generation {g} expected"
    assert np.array_equal(np.asarray(tree.a.value.value), expected.a.value.value), f"the tied array is not generation {g}"
    return g


def own_files(path: Path) -> List[str]:
    r"""The names in :py:`path`'s folder that belong to the checkpoint at :py:`path`
    (an HF index has its shards beside it): anything else there is a leftover."""

    if path.name.endswith(".safetensors.index.json"):
        return sorted({path.name, *json.loads(path.read_text())["weight_map"].values()})
    return [path.name]


def save_forever(path: str, generation: int, zygote: int, options: dict) -> None:
    r"""Saves generation, generation + 1, ... to :py:`path` until killed (or orphaned),
    with :py:`options` of :func:`inox_io.save` (``format``, ``max_shard_size``)."""

    import jax

    import inox_io

    jax.process_count()  # starts JAX's runtime (which directory saves need) before the kill clock
    make_tree(0)  # and runs its first array conversions (parameters hold JAX arrays)
    print(f"go {os.getpid()}", flush=True)
    while os.getppid() == zygote:  # stop if the zygote died: never outlive the test
        inox_io.save(path, make_tree(generation), overwrite=True, metadata={"generation": str(generation)}, **options)
        generation += 1


def manage_forever(directory: str, step: int, zygote: int) -> None:
    r"""Saves steps asynchronously through a CheckpointManager until killed."""

    import jax

    from inox_io import CheckpointManager

    manager = CheckpointManager(directory, max_to_keep=3, async_save=True)
    jax.process_count()  # starts JAX's runtime (which save needs) before the kill clock
    make_tree(0)  # and runs its first array conversions (parameters hold JAX arrays)
    print(f"go {os.getpid()}", flush=True)
    while os.getppid() == zygote:
        manager.save(step, {"model": make_tree(step), "data": {"step": step}})
        step += 1


def commands():
    r"""The JSON commands read from stdin, unbuffered (see :func:`reap`)."""

    pending = b""
    while chunk := os.read(0, 4096):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield json.loads(line)


def reap(pid: int) -> int:
    r"""Waits for the child to die and returns its wait status.

    The test sends nothing while a child runs, so stdin becoming readable means it
    closed: the test is gone, and the child must not save forever.
    """

    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if select.select([0], [], [], 0.002)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.exit(0)


def main() -> None:
    import inox_io  # imported before forking, once

    # Its public names load at their first use: load the savers' now, not in each child.
    inox_io.save, inox_io.CheckpointManager

    zygote = os.getpid()
    print(f"ready {inox_io.__file__}", flush=True)
    for command in commands():
        pid = os.fork()
        if pid == 0:
            code = 0
            signal.alarm(LIFETIME)  # its default action ends the process
            try:
                if command.get("manager"):
                    manage_forever(command["path"], command["generation"], zygote)
                else:
                    save_forever(command["path"], command["generation"], zygote, command.get("options", {}))
            except BaseException as e:  # reported on stderr; the test sees the status
                print(f"child: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                code = 1
            finally:
                os._exit(code)  # never run the zygote's loop or atexit handlers in the child
        print(f"exit {reap(pid)}", flush=True)


if __name__ == "__main__":
    main()
