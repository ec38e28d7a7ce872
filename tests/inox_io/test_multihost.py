r"""Saving and restoring under ``jax.distributed``: two real processes on 127.0.0.1.

The checks themselves run in ``multihost_worker.py``; this test starts the processes
(:class:`processes.Job`: a free port, a deadline, whatever is left killed at the end).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from processes import Job

WORKER = Path(__file__).with_name("multihost_worker.py")
PROCESSES = 2
DEADLINE = 240  # seconds for the whole run; it takes ~10 s


def test_two_processes_save_and_restore_sharded_tied_model(tmp_path):
    # 2 devices per process; if one process fails, the wait ends (the other would
    # wait for it in a collective).
    job = Job(WORKER, PROCESSES, [tmp_path], tmp_path / "logs", devices=2, name="multihost")
    try:
        codes = job.wait(DEADLINE)
    finally:
        job.kill()
    outputs = job.outputs()
    for i, (code, output) in enumerate(zip(codes, outputs)):
        if code != 0 or f"WORKER OK {i}" not in output:
            pytest.fail(f"process {i} failed (exit code {code}):\n{output[-6000:]}")
