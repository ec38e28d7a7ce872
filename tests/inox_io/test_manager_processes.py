r"""The CheckpointManager across real processes on 127.0.0.1 (gloo collectives): async
steps with retention, restores on other process counts and meshes, a failure on one
process, preemption, and kills of one process or of the whole job.

The checks run in ``manager_worker.py``; each test starts jobs of it with
:class:`processes.Job` and reads what every process printed.
"""

from __future__ import annotations

import random
import re
import signal

from pathlib import Path

import pytest

from processes import Job

WORKER = Path(__file__).with_name("manager_worker.py")
DEADLINE = 180  # seconds for one job; each takes a few
ENV = {"INOX_IO_TIMEOUT_S": "60"}  # a process that waits for a dead one fails, not hangs
FOREVER = str(10**6)  # steps: the job runs until it is stopped


def run(directory: Path, processes: int, *args, name: str, devices: int = 2, env: dict | None = None) -> list[str]:
    job = Job(WORKER, processes, [directory, *args], directory.parent / "logs", devices=devices, name=name, env={**ENV, **(env or {})})
    try:
        codes = job.wait(DEADLINE)
    finally:
        job.kill()
    outputs = job.outputs()
    if codes != [0] * processes or not all(f"WORKER OK {i}" in out for i, out in enumerate(outputs)):
        pytest.fail(f"{name} failed:\n{job.report()}")
    return outputs


def printed(output: str, word: str) -> list[str]:
    return re.findall(rf"^{word} (.*)$", output, re.MULTILINE)


def test_steps_saved_by_two_processes_resume_on_four_and_restore_on_one(tmp_path):
    directory = tmp_path / "ckpt"
    for out in run(directory, 2, "train", 4, name="two"):
        assert printed(out, "STEPS") == ["[3, 4]"]  # max_to_keep=2, the same answer everywhere
    for out in run(directory, 4, "train", 6, name="four"):  # resumes from step 4 saved by 2
        assert printed(out, "RESUMED") == ["4"] and printed(out, "STEPS") == ["[5, 6]"]
    (out,) = run(directory, 1, "restore", name="one", devices=4)
    assert printed(out, "RESTORED") == ["6"]
    for out in run(directory, 2, "restore", name="restore-two"):
        assert printed(out, "RESTORED") == ["6"]


@pytest.mark.parametrize("layout", ["sharded", "orbax"])
@pytest.mark.parametrize("fail_on", [0, 1])
def test_a_failure_on_one_process_fails_the_step_everywhere(tmp_path, fail_on, layout):
    outputs = run(tmp_path / "ckpt", 2, "fail", 0, fail_on, name="fail", env={"WORKER_FORMAT": layout})
    for i, out in enumerate(outputs):
        (message,) = printed(out, "FAILED AS EXPECTED:")
        if i != fail_on:
            assert f"failed on process {fail_on}" in message


def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resumes_exactly(tmp_path):
    directory = tmp_path / "ckpt"
    job = Job(WORKER, 2, [directory, "train", FOREVER], tmp_path / "logs", name="term", env=ENV)
    try:
        assert job.wait_for("SAVED 3", DEADLINE), job.report()
        job.signal(signal.SIGTERM, which=[1])
        codes = job.wait(DEADLINE)
    finally:
        job.kill()
    assert codes == [0, 0], job.report()
    stops = [printed(out, "PREEMPTED") for out in job.outputs()]
    assert stops[0] == stops[1] and len(stops[0]) == 1, job.report()
    stop = int(stops[0][0])
    # The resumed run checks its state against the exact values of each step.
    for out in run(directory, 2, "train", stop + 2, name="resume"):
        assert printed(out, "RESUMED") == [str(stop)] and printed(out, "STEPS") == [f"[{stop + 1}, {stop + 2}]"]


def test_sigkill_of_one_process_fails_the_others_and_commits_nothing_partial(tmp_path):
    directory = tmp_path / "ckpt"
    env = {**ENV, "INOX_IO_TIMEOUT_S": "20", "WORKER_HEARTBEAT_S": "5"}
    job = Job(WORKER, 2, [directory, "train", FOREVER], tmp_path / "logs", name="kill-one", env=env)
    try:
        assert job.wait_for("SAVED 2", DEADLINE), job.report()
        job.signal(signal.SIGKILL, which=[1])
        code = job.workers[0].wait(timeout=90)  # fails instead of hanging
    finally:
        job.kill()
    assert code != 0, job.report()
    for out in run(directory, 2, "restore", name="after"):
        assert int(printed(out, "RESTORED")[0]) >= 1  # "SAVED 2": started; step 1 was committed before


def test_sigkill_of_the_whole_job_at_random_moments(tmp_path):
    directory, rng = tmp_path / "ckpt", random.Random(0)
    resumed = []
    for kill in range(20):
        job = Job(WORKER, 2, [directory, "train", FOREVER], tmp_path / "logs", name=f"kill{kill}", env=ENV)
        try:
            # Each job first checks the latest step against its exact values, and
            # that the leftovers of the killed job are gone.
            assert job.wait_for("RESUMED", DEADLINE), job.report()
            job.wait(rng.uniform(0.0, 1.5))
            assert all(code in (None, 0) for code in [w.poll() for w in job.workers]), job.report()
        finally:
            job.kill()
        resumed.append(int(printed(job.outputs()[0], "RESUMED")[0]))
    # The newest complete step survives every kill (retention never removes it).
    assert resumed == sorted(resumed) and resumed[-1] > 0, resumed
    (out, _) = run(directory, 2, "train", resumed[-1] + 2, name="final")
    assert int(printed(out, "RESUMED")[0]) >= resumed[-1]
    assert not [p for p in directory.iterdir() if p.name.startswith(".inox_io-tmp-")]
