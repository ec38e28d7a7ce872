r"""The benchmark runs end to end and prints its table.

Tiny sizes, one repetition, a few methods: this checks that the command works, not how
fast anything is (timings are checked by the benchmark itself, never by tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_runs_and_prints_its_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # as from a shell
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.run", "--tiny",
            "--cases", "a,c,d", "--methods", "raw,inox_io-safetensors",
            "--dir", str(tmp_path / "work"), "--json", str(tmp_path / "results.json"),
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["case", "method", "save", "s"]
    for case in ("a", "c"):
        assert any(line.split()[:2] == [case, "inox_io-safetensors"] for line in lines), done.stdout
    assert any(line.startswith("(d) ") for line in lines)
    assert "targets met" in lines[-1]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["c"]["unique_bytes"] < results["c"]["flat_bytes"]  # the tie is counted once
    assert results["a"]["memory"]["inox_io-safetensors"]["load"]["peak"] > 0
    assert not any((tmp_path / "work").iterdir())  # checkpoints cleaned up
