r"""Crashes during saves to a bucket: a process saving in a loop to ``s3://`` or
``gs://`` (servers on 127.0.0.1, see ``object_servers.py``) is killed (SIGKILL) at
random moments, at least 10 times per layout; every time, the URL must load as one
complete checkpoint, old or new, never mixed, and only generations of killed saves
may lie beside the committed one, which the next save removes.

The savers are forked by the zygote of ``test_reliability_crash.py`` (``crash_worker.py``).
Jobs of two processes saving the sharded or the orbax layout together
(``bucket_saver_worker.py``) are killed whole, as a preemption kills a job, with the same checks."""

from __future__ import annotations

import json
import os
import random
import signal
import time
import zlib

from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("gcp_storage_emulator")

import inox_io

from crash_worker import generation_of, make_tree
from inox_io.storage import locate
from inox_io.storage.bucket import bucket
from inox_io.storage.commit import DATA_SUFFIX, committed
from object_servers import BUCKET, serving
from processes import Job
from test_reliability_crash import Zygote

KILLS = 6  #: per layout and scheme (12 per layout): half at random, half inside a save
#: name, save format, longest delay before a kill (s): a saver's first save takes ~0.2 s
#: (it opens the bucket), the next ones 10-30 ms (orbax's 150 ms), so the kills land in
#: the first save and in the later ones.
LAYOUTS = {
    "safetensors": ("model.safetensors", None, 0.5),
    "msgpack": ("model.msgpack", None, 0.5),
    "hf_index": ("model.safetensors.index.json", None, 0.5),
    "sharded": ("ckpt", None, 0.5),
    "orbax": ("ckpt", "orbax", 1.2),
}


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    with serving():
        z = Zygote()  # inherits the servers' environment
        yield z
        z.close()


def generations(url: str) -> set:
    where = locate(url)
    prefix = f"{where.key}{DATA_SUFFIX}/"
    return {k[len(prefix):].split("/", 1)[0] for k in bucket(where).keys(prefix)}


def kill_inside_save(zygote: Zygote, command: dict, url: str) -> None:
    r"""Starts a saver and kills it as soon as a generation of its own appears in the
    bucket: inside a save, between its first upload and its cleanup."""

    zygote.process.stdin.write(json.dumps(command).encode() + b"\n")
    line = zygote.readline()
    assert line.startswith("go "), f"the saver failed to start ({line}; see its stderr)"
    pid, deadline = int(line.split()[1]), time.monotonic() + 10
    while len(generations(url)) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    kind, status = zygote.readline().split()
    assert kind == "exit" and os.WIFSIGNALED(int(status)) and os.WTERMSIG(int(status)) == signal.SIGKILL, status


@pytest.mark.parametrize("scheme", ["s3", "gs"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kill_during_save_to_bucket(zygote, scheme, layout):
    name, fmt, max_delay = LAYOUTS[layout]
    url = f"{scheme}://{BUCKET}/crash-{layout}/{name}"
    rng = random.Random(zlib.crc32(url.encode()))
    like = make_tree(0)
    inox_io.save(url, make_tree(1), overwrite=True, metadata={"generation": "1"}, format=fmt)
    seen, interrupted = [1], 0
    # Half the kills after a random delay, one in each equal slice of the window (the
    # last ones after saves completed), the others inside a save.
    slices = KILLS // 2
    delays = [max_delay * (i + rng.random()) / slices for i in range(slices)]
    for delay in delays:
        inside = lambda command: kill_inside_save(zygote, command, url)  # noqa: E731
        anywhere = lambda command: zygote.run_and_kill(command, delay)  # noqa: E731 (in a save, between, at start)
        for kill in (inside, anywhere):
            kill({"path": url, "generation": seen[-1] + 1, "options": {"format": fmt}})
            g = generation_of(inox_io.load(url, like))  # all arrays agree, tie intact
            assert inox_io.inspect(url).metadata == {"generation": str(g)}
            assert g >= seen[-1], f"generation {g} after {seen[-1]}: an older checkpoint came back"
            interrupted += len(generations(url)) > 1  # a killed save's files lie beside the committed
            seen.append(g)
    # Not vacuous: saves completed between kills, and kills landed inside saves.
    assert len(set(seen)) > 1 and interrupted > 0, (seen, interrupted)

    # The next save, in a live process, removes what the killed ones left.
    inox_io.save(url, make_tree(seen[-1] + 1), overwrite=True, metadata={"generation": "0"}, format=fmt)
    assert generations(url) == {committed(locate(url))[0]}
    assert generation_of(inox_io.load(url, like)) == seen[-1] + 1


JOB_WORKER = Path(__file__).with_name("bucket_saver_worker.py")
#: Kills of a job of two processes per scheme: one after a random delay, one inside a
#: save, in turn (each job starts anew: ~5 s); 10 per scheme with --slow.
JOB_KILLS, JOB_KILLS_SLOW = 2, 10
JOB_MAX_DELAY = 1.0  #: s after the job is up; a save of the tree takes ~0.1 s


@pytest.mark.parametrize("layout", ["sharded", "orbax"])
@pytest.mark.parametrize(
    "scheme, kills",
    [("s3", JOB_KILLS), pytest.param("s3", JOB_KILLS_SLOW, marks=pytest.mark.slow), pytest.param("gs", JOB_KILLS_SLOW, marks=pytest.mark.slow)],
)
def test_kill_a_job_of_two_processes_saving_to_a_bucket(zygote, tmp_path, scheme, kills, layout):
    url = f"{scheme}://{BUCKET}/crash-job-{kills}-{layout}/ckpt"
    rng = random.Random(zlib.crc32(url.encode()))
    like = make_tree(0)
    inox_io.save(url, make_tree(1), overwrite=True, metadata={"generation": "1"}, format=layout)
    seen, interrupted = [1], 0
    for i in range(kills):
        job = Job(JOB_WORKER, 2, [url, seen[-1] + 1, layout], tmp_path / "logs", devices=2, name=f"saver{i}", env={"INOX_IO_TIMEOUT_S": "60"})
        try:
            assert job.wait_for("ready", 120), f"the job did not start:\n{job.report()}"
            if i % 2:  # inside a save: once a generation of its own is in the bucket
                deadline = time.monotonic() + 60
                while len(generations(url)) < 2 and time.monotonic() < deadline:
                    time.sleep(0.001)
            else:
                time.sleep(rng.uniform(0, JOB_MAX_DELAY))
        finally:
            job.kill()  # both processes, SIGKILL
        g = generation_of(inox_io.load(url, like))  # all arrays agree, tie intact
        assert inox_io.inspect(url).metadata == {"generation": str(g)}
        assert g >= seen[-1], f"generation {g} after {seen[-1]}: an older checkpoint came back"
        interrupted += len(generations(url)) > 1
        seen.append(g)
    assert interrupted > 0, seen  # not vacuous: kills landed inside saves

    inox_io.save(url, make_tree(seen[-1] + 1), overwrite=True, metadata={"generation": "0"}, format=layout)
    assert generations(url) == {committed(locate(url))[0]}
    assert generation_of(inox_io.load(url, like)) == seen[-1] + 1
