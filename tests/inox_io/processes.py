r"""Jobs of real processes on 127.0.0.1 for the multi-process tests: a free port, the
processes of one job started together, waited for with a deadline, killed at the end.

Example:
    >>> 1024 <= free_port() < 65536
    True
"""

from __future__ import annotations

__all__ = ["Job", "free_port"]

import os
import signal
import socket
import subprocess
import sys
import time

from pathlib import Path
from typing import List, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    r"""The :py:`processes` processes of :py:`script`, each run as
    ``script PROCESS_ID NUM_PROCESSES PORT *args`` with :py:`devices` CPU devices,
    their output in ``logs/<name>.<id>.log``."""

    def __init__(self, script: Path, processes: int, args: Sequence[str], logs: Path, *, devices: int = 2, name: str = "job", env: dict | None = None):
        environment = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
        environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        port = free_port()
        logs.mkdir(parents=True, exist_ok=True)
        self.paths = [logs / f"{name}.{i}.log" for i in range(processes)]
        self.workers: List[subprocess.Popen] = []
        for i, path in enumerate(self.paths):
            with open(path, "w") as log:
                command = [sys.executable, str(script), str(i), str(processes), str(port), *map(str, args)]
                self.workers.append(subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT))

    def wait(self, deadline: float) -> List[int | None]:
        r"""Waits until all exit, one fails, or :py:`deadline` seconds pass; returns
        the exit codes (:py:`None` for a process still running)."""

        end = time.monotonic() + deadline
        while time.monotonic() < end:
            codes = [w.poll() for w in self.workers]
            if all(code is not None for code in codes) or any(code not in (None, 0) for code in codes):
                return codes
            time.sleep(0.1)
        return [w.poll() for w in self.workers]

    def wait_for(self, text: str, deadline: float) -> bool:
        r"""Waits until every process has printed :py:`text` (or one exited)."""

        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if all(text in log for log in self.outputs()):
                return True
            if any(w.poll() is not None for w in self.workers):
                return all(text in log for log in self.outputs())
            time.sleep(0.05)
        return False

    def signal(self, signum: int, which: Sequence[int] | None = None) -> None:
        for i, w in enumerate(self.workers):
            if (which is None or i in which) and w.poll() is None:
                os.kill(w.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        for w in self.workers:
            w.wait()

    def outputs(self) -> List[str]:
        return [path.read_text(errors="replace") for path in self.paths]

    def report(self) -> str:
        codes = [w.poll() for w in self.workers]
        return "\n".join(f"--- process {i} (exit {code}):\n{log[-4000:]}" for i, (code, log) in enumerate(zip(codes, self.outputs())))
