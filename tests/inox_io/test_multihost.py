r"""Saving and restoring under ``jax.distributed``: two real processes on 127.0.0.1.

The checks themselves run in ``multihost_worker.py``; this test starts the processes,
with a free port and a deadline, and kills whatever is left at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("multihost_worker.py")
PROCESSES = 2
DEADLINE = 240  # seconds for the whole run; it takes ~10 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_save_and_restore_sharded_tied_model(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # 2 devices per process
    env["JAX_PLATFORMS"] = "cpu"
    port = free_port()

    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(PROCESSES)]
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(PROCESSES), str(port), str(tmp_path)],
            env=env,
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )
        for i in range(PROCESSES)
    ]

    try:
        # Poll: if one process fails, the other would wait for it in a collective.
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            codes = [worker.poll() for worker in workers]
            if all(code == 0 for code in codes) or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.2)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()

    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()

    for i, (worker, output) in enumerate(zip(workers, outputs)):
        if worker.returncode != 0 or f"WORKER OK {i}" not in output:
            pytest.fail(f"process {i} failed (exit code {worker.returncode}):\n{output[-6000:]}")
