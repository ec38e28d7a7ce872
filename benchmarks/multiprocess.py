r"""Sharded checkpoints across devices and processes: the sharded directory layout
against the orbax layout, plain orbax and the raw per-process baseline, in one run.

.. code-block:: bash

    python -m benchmarks.multiprocess --size quick --reps 3 --cold

For each job (1 process x 8 CPU devices, 2 processes x 4) and case (a, b, c of
:mod:`benchmarks.cases`), the processes of :mod:`benchmarks.multiprocess_worker` save
and load every method, interleaved; each figure is the median over the repetitions of
the slowest process's time, and its ratio to the raw baseline measured beside it.
``reshard`` loads onto another mesh; its raw baseline reads and places the same number
of bytes per process. ``read/needed`` is, per process, the bytes the sharded layout read
(counted by its reader), and those of the single file checksummed, over the bytes of
that process's target shards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from pathlib import Path
from typing import Any, Dict, List

from .multiprocess_worker import METHODS

JOBS = [(1, 8), (2, 4)]  #: (processes, devices per process)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(processes: int, devices: int, case: str, args: argparse.Namespace, folder: Path) -> Dict[str, Any]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    port = free_port()
    extra = ["--case", case, "--size", args.size, "--dir", str(folder), "--reps", str(args.reps), "--methods", args.methods]
    extra += ["--cold"] if args.cold else []
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.multiprocess_worker", str(i), str(processes), str(port), *extra],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outputs = [w.communicate(timeout=3600)[0] for w in workers]
    if any(w.returncode for w in workers):
        raise RuntimeError(f"{processes}x{devices} case {case}: a worker failed:\n{outputs}")
    line = next(l for l in outputs[0].splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def rows(result: Dict[str, Any]) -> List[List[str]]:
    times = result["times"]
    base = {op: statistics.median(times["raw"][op]) for op in ("save", "load", "reshard")}
    out = []
    for m in [m for m in METHODS if m in times]:
        cells = [m]
        for op in ("save", "load", "reshard"):
            t = statistics.median(times[m][op])
            cells.append(f"{t:.3f} s ({t / base[op]:.2f}x)")
        out.append(cells)
    return out


def markdown(results: Dict[str, Dict[str, Any]]) -> str:
    lines = []
    for name, result in results.items():
        read = []  # counted by each layout's reader: what the sharded one read, what the file's checked
        for m in [m for m in ("inox_io-sharded", "inox_io-file") if m in result["times"]]:
            ratios = [p["reads"][m]["counted"] / max(p["needed"], 1) for p in result["reads"]]
            read.append(f"{m} " + ", ".join(f"{r:.2f}" for r in ratios))
        lines += [
            f"**{name}** ({result['nbytes'] / 2**20:.0f} MiB; read/needed per process on reshard: " + "; ".join(read) + ")",
            "",
            "| method | save (x raw) | load (x raw) | reshard (x raw) |",
            "|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows(result)]
        lines.append("")
        if "manager-sync" in result["times"] and "manager-async" in result["times"]:
            sync = statistics.median(result["times"]["manager-sync"]["save"])
            blocked = statistics.median(result["times"]["manager-async"]["save"])
            written = statistics.median(result["times"]["manager-async"]["written"])
            lines += [
                f"CheckpointManager: an async save blocks {blocked:.3f} s, {100 * blocked / sync:.1f}% of a sync save "
                f"({sync:.3f} s); its step is committed after {written:.3f} s.",
                "",
            ]
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multiprocess")
    parser.add_argument("--size", default="quick", choices=["full", "quick", "tiny"])
    parser.add_argument("--cases", default="a,b,c")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="empty the page cache before each load (root)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for processes, devices in JOBS:
            for case in args.cases.split(","):
                name = f"{processes} x {devices} devices, case {case}"
                print(f"running {name}", file=sys.stderr, flush=True)
                results[name] = run_job(processes, devices, case, args, Path(folder))
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
