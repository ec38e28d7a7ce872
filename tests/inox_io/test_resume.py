r"""A training run killed (SIGKILL) at a random step and resumed from its checkpoints
has the loss trajectory, and ends with the weights, of an uninterrupted run, bit for bit.

The runs are subprocesses of ``examples/train_tied_lm.py``; they share a persistent
compilation cache, so that only the first one compiles (this also makes every run
execute the very same compiled programs).
"""

import os
import random
import re
import signal
import subprocess
import sys

from pathlib import Path


from safetensors.numpy import load_file

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


def command(directory: Path, *extra: str) -> list:
    return [sys.executable, str(EXAMPLE), "--dir", str(directory), "--steps", str(STEPS), "--every", str(EVERY), *extra]


def losses(lines) -> dict:
    out = {}
    for line in lines:
        match = LINE.match(line)
        if match:
            out[int(match[1])] = match[2]  # float.hex(): exact
    return out


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    env = environment(tmp_path / "cache")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    done = subprocess.run(command(straight), env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    expected = losses(done.stdout.splitlines())
    assert sorted(expected) == list(range(1, STEPS + 1))

    # Killed at a random step after the first checkpoint: maybe in the middle of a save.
    seed = random.randrange(2**32)
    kill_at = random.Random(seed).randint(EVERY + 1, STEPS - 1)
    context = f"(kill at step {kill_at}, seed {seed})"
    process = subprocess.Popen(
        command(interrupted, "--delay", "0.15"), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    printed = []
    try:
        for line in process.stdout:
            printed.append(line)
            match = LINE.match(line)
            if match and int(match[1]) >= kill_at and CheckpointManager(interrupted, read_only=True).all_steps():
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"{context} the run was not killed: {stderr}"
    before = losses(printed)
    assert before and all(expected[s] == loss for s, loss in before.items()), context

    resumed = subprocess.run(command(interrupted, "--resume"), env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    start = int(re.search(r"resumed from step (\d+)", resumed.stdout)[1])
    assert EVERY <= start <= max(before) and start % EVERY == 0, context
    after = losses(resumed.stdout.splitlines())
    assert sorted(after) == list(range(start + 1, STEPS + 1)), context

    trajectory = {s: loss for s, loss in before.items() if s <= start} | after
    assert trajectory == expected, context

    # Not only the losses: the final checkpoints hold the same bits.
    for item in ("model", "opt_state", "rng"):
        a = load_file(straight / str(STEPS) / f"{item}.safetensors")
        b = load_file(interrupted / str(STEPS) / f"{item}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].tobytes() == b[key].tobytes(), f"{item} {key} {context}"
    assert not [p for p in interrupted.iterdir() if p.name.startswith(TEMP_PREFIX)]
