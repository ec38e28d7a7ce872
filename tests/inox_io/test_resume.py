r"""A training run killed (SIGKILL) at a random step, or preempted (SIGTERM), and
resumed from its checkpoints has the loss trajectory, and ends with the weights, of an
uninterrupted run, bit for bit: in one process, and as a job of two processes.

The runs are subprocesses of ``examples/train_tied_lm.py``; they share a persistent
compilation cache, so that only the first one compiles (this also makes every run
execute the very same compiled programs).
"""

import functools
import os
import pytest
import random
import re
import signal
import subprocess
import sys

from pathlib import Path



import inox_io

from inox_io import CheckpointManager
from inox_io.atomic import TEMP_PREFIX

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train_tied_lm.py"
STEPS, EVERY = 12, 3
LINE = re.compile(r"step (\d+) loss (\S+) ")


def environment(cache: Path) -> dict:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def command(directory: Path, processes: int, *extra: str) -> list:
    return [
        sys.executable, str(EXAMPLE), "--dir", str(directory), "--steps", str(STEPS), "--every", str(EVERY),
        "--processes", str(processes), *extra,
    ]  # fmt: skip


def losses(lines) -> dict:
    out = {}
    for line in lines:
        match = LINE.match(line)
        if match:
            out[int(match[1])] = match[2]  # float.hex(): exact
    return out


@functools.lru_cache
def uninterrupted(processes: int, base: Path) -> tuple:
    r"""The losses and final checkpoint of a run never stopped (once per process count)."""

    directory = base / f"straight-{processes}"
    done = subprocess.run(command(directory, processes), env=environment(base / "cache"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = losses(done.stdout.splitlines())
    assert sorted(expected) == list(range(1, STEPS + 1))
    return expected, directory


def checksums(directory: Path, step: int) -> dict:
    r"""The CRC-32 of every stored array of a step, whatever the layout: equal bits."""

    items = CheckpointManager(directory, read_only=True).metadata(step)["items"]
    return {
        (item, key): info.crc32
        for item, entry in items.items()
        if "file" in entry
        for key, info in inox_io.inspect(directory / str(step) / entry["file"]).arrays.items()
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")  # shared: one compilation cache, one straight run each


@pytest.mark.parametrize("processes, stop", [(1, signal.SIGKILL), (2, signal.SIGKILL), (2, signal.SIGTERM)])
def test_stopped_and_resumed_run_is_bit_identical(base, processes, stop):
    env = environment(base / "cache")
    expected, straight = uninterrupted(processes, base)
    interrupted = base / f"interrupted-{processes}-{stop.name}"

    # Stopped at a random step after the first checkpoint: maybe in the middle of a save.
    seed = random.randrange(2**32)
    # A preemption notice takes a step or two to reach every process: leave it room.
    stop_at = random.Random(seed).randint(EVERY + 1, STEPS - 1 if stop == signal.SIGKILL else STEPS - 6)
    context = f"({stop.name} at step {stop_at}, seed {seed})"
    process = subprocess.Popen(
        command(interrupted, processes, "--delay", "0.15"),
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    printed = []
    try:
        for line in process.stdout:
            printed.append(line)
            match = LINE.match(line)
            if match and int(match[1]) >= stop_at and CheckpointManager(interrupted, read_only=True).all_steps():
                if stop == signal.SIGKILL:
                    os.killpg(process.pid, signal.SIGKILL)  # the whole job, as a crash of its machines
                else:
                    process.send_signal(signal.SIGTERM)  # the scheduler's notice, to one process
                break
        printed += process.stdout.read().splitlines() if stop == signal.SIGTERM else []
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    wanted = -signal.SIGKILL if stop == signal.SIGKILL else 0
    assert process.returncode == wanted, f"{context} exit code {process.returncode}: {stderr[-3000:]}"
    before = losses(printed)
    assert before and all(expected[s] == loss for s, loss in before.items()), context

    resumed = subprocess.run(command(interrupted, processes, "--resume"), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    start = int(re.search(r"resumed from step (\d+)", resumed.stdout)[1])
    if stop == signal.SIGKILL:
        assert EVERY <= start <= max(before) and start % EVERY == 0, context
    else:  # preempted: the step it stopped at was saved, on every process
        assert f"preempted: saved step {start}" in "".join(printed) and start == max(before), context
    after = losses(resumed.stdout.splitlines())
    assert sorted(after) == list(range(start + 1, STEPS + 1)), context

    trajectory = {s: loss for s, loss in before.items() if s <= start} | after
    assert trajectory == expected, context

    # Not only the losses: the final checkpoints hold the same bits.
    assert checksums(straight, STEPS) == checksums(interrupted, STEPS), context
    assert not [p for p in interrupted.iterdir() if p.name.startswith(TEMP_PREFIX)]
