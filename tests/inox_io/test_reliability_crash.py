r"""Crashes during a save: a process saving in a loop is killed (SIGKILL) at random
moments; every time, the path must hold one complete checkpoint, old or new.

Each save writes arrays that all hold its generation number, and the generation in its
metadata, so a file mixing two saves is detected (see ``crash_worker.py``).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import zlib

from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import inox_io

from crash_worker import generation_of, make_tree, own_files
from inox_io.atomic import is_temporary

WORKER = Path(__file__).with_name("crash_worker.py")
ROOT = Path(__file__).resolve().parents[2]
FORMATS = ["safetensors", "msgpack"]
KILLS, SLOW_KILLS = 40, 400
MAX_DELAY = 0.050  # seconds; a save takes ~10 ms here, so kills land everywhere in it


class Zygote:
    r"""The worker process: forks savers on demand (see ``crash_worker.py``)."""

    TIMEOUT = 60  # seconds to wait for any line; a hang fails the test instead

    def __init__(self):
        # The repository's inox_io, whatever copy is installed: the worker runs as a script.
        path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
        )
        self.pending = b""
        kind, module = self.readline().split(" ", 1)
        assert kind == "ready" and Path(module) == Path(inox_io.__file__), f"the worker runs {module}"

    def readline(self) -> str:
        fd = self.process.stdout.fileno()
        while b"\n" not in self.pending:
            if not select.select([fd], [], [], self.TIMEOUT)[0]:
                raise AssertionError(f"the worker said nothing for {self.TIMEOUT} s")
            chunk = os.read(fd, 4096)
            assert chunk, f"the worker died (exit code {self.process.poll()})"
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode().strip()

    def run_and_kill(self, command: dict, delay: float) -> int:
        r"""Starts a saver, kills it after :py:`delay` seconds, returns its pid."""

        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        line = self.readline()
        assert line.startswith("go "), f"the saver failed to start ({line}; see its stderr)"
        pid = int(line.split()[1])
        # Sleeping here, not in the worker: the kill must come from outside, unannounced.
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        kind, status = self.readline().split()
        assert kind == "exit"
        # Killed by our signal: had it exited on its own, it met an error (see its stderr).
        assert os.WIFSIGNALED(int(status)) and os.WTERMSIG(int(status)) == signal.SIGKILL, status
        return pid

    def close(self) -> None:
        self.process.stdin.close()  # the worker then kills any saver and exits
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


def temporaries(directory: Path) -> List[Path]:
    return sorted(p for p in directory.iterdir() if is_temporary(p))


def temp_pid(path: Path) -> int:
    return int(path.name.rsplit(".", 2)[1])


def kill_repeatedly(zygote: Zygote, path: Path, kills: int, seed: int) -> Tuple[List[int], int]:
    r"""Kills savers of :py:`path` :py:`kills` times; after each kill checks that the
    path loads as one complete checkpoint, no older than the previous one, and that
    only temporaries of killed savers lie beside it.

    Returns the generations seen and how many kills left a temporary behind.
    """

    rng = random.Random(seed)
    like = make_tree(0)
    inox_io.save(path, make_tree(1), metadata={"generation": "1"})
    seen, interrupted, killed = [1], 0, set()

    for _ in range(kills):
        pid = zygote.run_and_kill({"path": str(path), "generation": seen[-1] + 1}, rng.uniform(0, MAX_DELAY))
        killed.add(pid)

        # Only the checkpoint and temporaries are there; no temporary is taken for one.
        entries = sorted(path.parent.iterdir())
        leftovers = temporaries(path.parent)
        assert entries == sorted([path, *leftovers]), entries
        for temp in leftovers:
            with pytest.raises((ValueError, inox_io.CheckpointError)):
                inox_io.load(temp, like)  # not even a recognized checkpoint name
        assert {temp_pid(t) for t in leftovers} <= killed

        restored = inox_io.load(path, like)
        g = generation_of(restored)  # all arrays agree, tie intact
        assert inox_io.inspect(path).metadata == {"generation": str(g)}  # header and data agree
        assert g >= seen[-1], f"generation {g} after {seen[-1]}: an older checkpoint came back"
        if g > seen[-1]:
            # This saver completed a save, which first removed the earlier savers' leftovers.
            assert {temp_pid(t) for t in leftovers} <= {pid}, leftovers
        interrupted += bool(leftovers)
        seen.append(g)

    # The next save, in a live process, removes what the killed ones left.
    inox_io.save(path, make_tree(seen[-1] + 1), overwrite=True, metadata={"generation": str(seen[-1] + 1)})
    assert temporaries(path.parent) == []
    assert generation_of(inox_io.load(path, like)) == seen[-1] + 1
    return seen, interrupted


def check_campaign(seen: List[int], interrupted: int, kills: int) -> None:
    # Not vacuous: saves completed between kills, and kills landed inside saves. (A
    # tenth, not more: on a loaded machine saves slow down and fewer complete.)
    assert len(set(seen)) > max(3, kills // 10), f"too few saves completed: generations {seen}"
    assert interrupted > 0, "no kill interrupted a save"


@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_during_save(zygote, tmp_path, fmt):
    seen, interrupted = kill_repeatedly(zygote, tmp_path / f"model.{fmt}", KILLS, seed=zlib.crc32(fmt.encode()))
    check_campaign(seen, interrupted, KILLS)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_during_save_long(zygote, tmp_path, fmt):
    seen, interrupted = kill_repeatedly(zygote, tmp_path / f"model.{fmt}", SLOW_KILLS, seed=random.randrange(2**32))
    check_campaign(seen, interrupted, SLOW_KILLS)


#: The layouts of several files, each with its own campaign: the checkpoint's name, the
#: options of its saves, and the spread of the kills in seconds (a save takes 5-50 ms
#: here; a process's first orbax save 0.3 s).
LAYOUTS = {
    "index": ("model.safetensors.index.json", {"max_shard_size": 300}, 0.150),  # 3 shards
    "sharded": ("ckpt", {}, 0.150),
    "orbax": ("ckpt", {"format": "orbax"}, 1.0),
}
LAYOUT_KILLS, SLOW_LAYOUT_KILLS = 20, 200


def kill_layout_repeatedly(
    zygote: Zygote, path: Path, options: dict, max_delay: float, kills: int, seed: int
) -> Tuple[List[int], int]:
    r"""Kills savers of a layout of several files (an index and its shards, a
    directory); after each kill, the path loads, verified, as one complete checkpoint
    no older than the previous one. A last save, in a live process, leaves nothing but
    the checkpoint's own files in the folder.

    Returns the generations seen and how many kills left something behind.
    """

    rng = random.Random(seed)
    like = make_tree(0)
    inox_io.save(path, make_tree(1), metadata={"generation": "1"}, **options)
    seen, interrupted = [1], 0
    for _ in range(kills):
        command = {"path": str(path), "generation": seen[-1] + 1, "options": options}
        zygote.run_and_kill(command, rng.uniform(0, max_delay))

        g = generation_of(inox_io.load(path, like))  # every array of one save, verified
        assert inox_io.inspect(path).metadata == {"generation": str(g)}
        assert g >= seen[-1], f"generation {g} after {seen[-1]}: an older checkpoint came back"
        interrupted += sorted(os.listdir(path.parent)) != own_files(path)
        seen.append(g)

    g = seen[-1] + 1
    inox_io.save(path, make_tree(g), overwrite=True, metadata={"generation": str(g)}, **options)
    assert generation_of(inox_io.load(path, like)) == g
    assert sorted(os.listdir(path.parent)) == own_files(path), "leftovers of killed saves remain"
    return seen, interrupted


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kill_during_save_of_each_layout(zygote, tmp_path, layout):
    name, options, max_delay = LAYOUTS[layout]
    seen, interrupted = kill_layout_repeatedly(zygote, tmp_path / name, options, max_delay, LAYOUT_KILLS, seed=zlib.crc32(layout.encode()))
    check_campaign(seen, interrupted, LAYOUT_KILLS)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kill_during_save_of_each_layout_long(zygote, tmp_path, layout):
    name, options, max_delay = LAYOUTS[layout]
    seen, interrupted = kill_layout_repeatedly(zygote, tmp_path / name, options, max_delay, SLOW_LAYOUT_KILLS, seed=random.randrange(2**32))
    check_campaign(seen, interrupted, SLOW_LAYOUT_KILLS)


def test_stale_temporaries_of_live_processes_are_kept(tmp_path):
    r"""Cleaning removes only dead savers' temporaries: a live process may be writing."""

    path = tmp_path / "model.safetensors"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        live_temp = tmp_path / f".inox_io-tmp-model.safetensors.{sleeper.pid}.0123abcd"
        dead_temp = tmp_path / f".inox_io-tmp-model.safetensors.{dead.pid}.0123abcd"
        other_target = tmp_path / f".inox_io-tmp-other.safetensors.{dead.pid}.0123abcd"
        for p in (live_temp, dead_temp, other_target):
            p.write_bytes(b"partial")
        inox_io.save(path, make_tree(1))
        assert temporaries(tmp_path) == sorted([live_temp, other_target])
    finally:
        sleeper.kill()
        sleeper.wait()


def kill_manager_repeatedly(zygote: Zygote, directory: Path, kills: int, seed: int) -> Tuple[List[int], int]:
    r"""Kills CheckpointManagers saving asynchronously; after each kill, every step
    listed must restore completely, and the newest must not go back."""

    rng = random.Random(seed)
    like = {"model": make_tree(0)}
    seen, interrupted, killed = [-1], 0, set()
    for _ in range(kills):
        pid = zygote.run_and_kill(
            {"path": str(directory), "generation": seen[-1] + 1, "manager": True}, rng.uniform(0, MAX_DELAY)
        )
        killed.add(pid)
        leftovers = temporaries(directory)
        assert {temp_pid(t) for t in leftovers} <= killed

        reader = inox_io.CheckpointManager(directory, read_only=True)
        steps = reader.all_steps()
        for step in steps:  # no step is listed that does not restore whole
            restored = reader.restore(step, like=like)
            assert generation_of(restored["model"]) == step and restored["data"] == {"step": step}
        latest = steps[-1] if steps else -1
        assert latest >= seen[-1], f"step {latest} after {seen[-1]}: the newest step went back"
        interrupted += bool(leftovers)
        seen.append(latest)

    # The next writer removes the killed ones' leftovers.
    inox_io.CheckpointManager(directory).close()
    assert temporaries(directory) == []
    return seen, interrupted


def test_kill_during_async_manager_save(zygote, tmp_path):
    if not hasattr(inox_io, "CheckpointManager"):
        pytest.skip("inox_io.CheckpointManager does not exist yet (inox_io/manager.py)")
    seen, interrupted = kill_manager_repeatedly(zygote, tmp_path / "run", KILLS, seed=7)
    check_campaign(seen, interrupted, KILLS)


@pytest.mark.slow
def test_kill_during_async_manager_save_long(zygote, tmp_path):
    if not hasattr(inox_io, "CheckpointManager"):
        pytest.skip("inox_io.CheckpointManager does not exist yet (inox_io/manager.py)")
    seen, interrupted = kill_manager_repeatedly(zygote, tmp_path / "run", SLOW_KILLS, seed=random.randrange(2**32))
    check_campaign(seen, interrupted, SLOW_KILLS)
