r"""Runs the inox_io benchmarks and prints one table, with the targets met or not.

.. code-block:: bash

    python -m benchmarks.run                      # full: ~14 min on 2 cores
    python -m benchmarks.run --quick              # smaller smoke variant: ~1 min
    python -m benchmarks.run --cases a,b --json out.json --markdown out.md

Cases: (a) 1 GiB in 8 float32 arrays; (b) 2,000 arrays of 32 KB; (c) a GPT-2-small
shaped model in bf16 whose embedding is tied to its head; (d) an asynchronous save of
case a's data. Every case is measured on the same data for every method, as medians of
repetitions after a warm-up; the ratios are to the physical baseline ("raw"): the same
bytes written sequentially to one file and fsynced, read back with one ``readinto`` and
placed on the device.

Each measurement kind runs in its own process (see :mod:`benchmarks.worker`): the
timings of a case; the loads onto 8 forced host devices; and each save's and each
load's peak resident memory, one process each. This process imports neither JAX nor
NumPy, so that its own memory does not leak into its children's peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from pathlib import Path
from typing import Any, Dict, List

from . import system
from .report import markdown, text_table
from .targets import check

ROOT = Path(__file__).resolve().parent.parent

PROFILES = {
    "full": {"size": "full", "reps": 7, "warmup": 1, "memory": "all"},
    "quick": {"size": "quick", "reps": 2, "warmup": 1, "memory": "inox_io"},
    "tiny": {"size": "tiny", "reps": 1, "warmup": 0, "memory": "inox_io"},
}

#: Method groups timed in separate processes (see :func:`run_case`).
GROUPS = ("files", "orbax")

#: The methods whose peak memory ``--memory inox_io`` measures: the targets' and the baseline.
MEMORY_INOX = ("raw", "inox_io-safetensors", "inox_io-msgpack")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _worker(kind: str, workdir: Path, profile: Dict[str, Any], extra: List[str], env: Dict[str, str] | None = None) -> Any:
    r"""Runs one measuring process and returns its result."""

    command = [
        sys.executable, "-m", "benchmarks.worker", kind,
        "--size", profile["size"], "--dir", str(workdir),
        "--reps", str(profile["reps"]), "--warmup", str(profile["warmup"]),
    ] + extra  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=1800
    )
    _log(f"  ({time.perf_counter() - start:.1f} s)")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def _memory_entry(raw: Dict[str, Any], op: str) -> Dict[str, Any]:
    r"""Adds ``used``: the bytes a save or load needs above an idle process (for a save,
    the model's bytes plus the save's own peak above the process holding the model).

    The peak is ``VmHWM`` where there is one (exact since the reset), ``ru_maxrss``
    otherwise; both stay in the results.
    """

    peak = raw["peak"].get("vmhwm", raw["peak"]["ru_maxrss"])
    used = peak - raw["before"] + raw["model_bytes"] if op == "save" else peak - raw["idle"]
    return {**raw, "peak": peak, "ru_maxrss": raw["peak"]["ru_maxrss"], "used": used}


def run_case(case: str, workdir: Path, profile: Dict[str, Any], args: argparse.Namespace, cold: bool) -> Dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    flags = ["--case", case, "--methods", args.methods] + (["--cold"] if cold else [])
    eight = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result: Dict[str, Any] = {"methods": {}}
    # The methods built on orbax run in processes of their own: orbax leaves threads
    # behind that slow down whatever runs next in its process.
    for group in GROUPS:
        if args.methods != "all" and not any(("orbax" in n) == (group == "orbax") for n in args.methods.split(",")):
            continue
        _log(f"case {case}: timing saves and loads ({group})")
        timed = _worker("time", workdir, profile, flags + ["--group", group])
        result["methods"].update(timed.pop("methods"))
        result.update(timed)
        _log(f"case {case}: timing loads onto 8 devices ({group})")
        sharded = _worker("sharded", workdir, profile, flags + ["--group", group], env=eight)
        for name, values in sharded["methods"].items():
            entry = result["methods"][name]
            entry["discarded"].update(values.pop("discarded"))
            entry.update(values)
    result["methods"] = {name: result["methods"][name] for name in result.pop("order") if name in result["methods"]}

    result["memory"] = {}
    memory = "none" if args.no_memory else args.memory or profile["memory"]
    for name in result["methods"]:
        if memory == "none" or (memory == "inox_io" and name not in MEMORY_INOX):
            continue
        for op in ("save", "load"):
            _log(f"case {case}: peak memory of {name} {op}")
            raw = _worker("memory", workdir, profile, ["--case", case, "--method", name, "--op", op])
            result["memory"].setdefault(name, {})[op] = _memory_entry(raw, op)
    return result


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 3 repetitions")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, 1 repetition (for tests)")
    parser.add_argument("--cases", default="a,b,c,d", help="comma-separated, among a,b,c,d")
    parser.add_argument("--methods", default="all", help="comma-separated method names (default: all)")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (after the warm-up)")
    parser.add_argument(
        "--memory",
        choices=["all", "inox_io", "none"],
        help="whose peak memory to measure: every method's (default), or inox_io's and raw's (--quick)",
    )
    parser.add_argument("--no-memory", action="store_true", help="same as --memory none")
    parser.add_argument("--warm", action="store_true", help="load from a warm page cache even if it can be emptied")
    parser.add_argument("--dir", type=Path, help="where checkpoints are written (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--markdown", type=Path, help="write the table and verdicts here, as Markdown")
    args = parser.parse_args(argv)

    profile = dict(PROFILES["tiny" if args.tiny else "quick" if args.quick else "full"])
    if args.reps is not None:
        profile["reps"] = args.reps
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set("abcd")
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose among a, b, c, d")

    base = args.dir or Path(tempfile.mkdtemp(prefix="inox_io-bench-", dir=str(ROOT.parent)))
    base.mkdir(parents=True, exist_ok=True)
    cold = not args.warm and system.can_drop_caches()
    settings = {
        **system.describe_machine(str(base)),
        "profile": f"{profile['size']} sizes, median of {profile['reps']} after {profile['warmup']} warm-up",
        "page cache for loads": "cold (emptied before each load)" if cold else "warm (cannot be emptied here)" if not args.warm else "warm",
        "memory reclaimed by the host": "watched; a repetition it hit is measured again"
        if system.memory_reported_kib() is not None
        else "not visible on this kernel",
    }
    _log("\n".join(f"{k}: {v}" for k, v in settings.items()))

    results: Dict[str, Any] = {"settings": settings}
    start = time.perf_counter()
    try:
        for case in cases:
            if case == "d":
                _log("case d: asynchronous save")
                results["d"] = _worker("async", base / "d", profile, [])
            else:
                results[case] = run_case(case, base / case, profile, args, cold)
                shutil.rmtree(base / case, ignore_errors=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            for case in cases:
                shutil.rmtree(base / case, ignore_errors=True)
    settings["benchmark time"] = f"{time.perf_counter() - start:.0f} s"

    checks = check(results)
    print(text_table(results, checks))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(results, checks, settings))
    return results


if __name__ == "__main__":
    main()
