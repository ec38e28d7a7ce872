r"""Machine facts, page cache control and resident-memory probes.

This module imports neither JAX nor NumPy: the orchestrating process stays small, which
matters because a child's ``ru_maxrss`` starts from its parent's peak (the kernel
records the parent's high-water mark when the child execs).
"""

from __future__ import annotations

__all__ = [
    "can_drop_caches",
    "drop_caches",
    "sync",
    "reset_peak",
    "peak_rss",
    "current_rss",
    "disk_bytes",
    "memory_reported_kib",
    "describe_machine",
]

import importlib.metadata
import os
import platform
import resource

from pathlib import Path
from typing import Dict


def drop_caches() -> bool:
    r"""Writes dirty pages back and empties the page cache, so that the next read comes
    from the disk. Returns whether it worked (it needs root)."""

    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        return False
    return True


def can_drop_caches() -> bool:
    r"""Whether :func:`drop_caches` works here (tried once)."""

    return drop_caches()


def sync() -> None:
    r"""Writes every dirty page back, so that one save does not pay for the previous."""

    os.sync()


#: A counter of the memory this virtual machine has reported free to its host (free
#: page reporting). Not every kernel has it; where absent, nothing is detected.
REPORTED_KIB = Path("/sys/module/page_reporting/parameters/reported_kib")


def memory_reported_kib() -> int | None:
    r"""How much memory, in KiB, this virtual machine has handed back to its host so far,
    or ``None`` where the kernel does not say.

    Memory handed back is slow to touch again (the host maps it anew, page by page), so
    an operation during which the count grows was slowed by the machine, not by itself.
    """

    try:
        return int(REPORTED_KIB.read_text())
    except (OSError, ValueError):
        return None


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    r"""Resets this process' peak resident size to its current size (Linux
    ``clear_refs``), so that building the data before a save does not count as the
    save's peak. Returns whether it worked."""

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss() -> Dict[str, int]:
    r"""The peak resident bytes of this process: ``ru_maxrss``, and ``VmHWM`` where
    Linux has it.

    ``VmHWM`` is the exact peak since :func:`reset_peak`; ``ru_maxrss`` also keeps the
    peaks of threads that exited before (the kernel folds them in at thread exit),
    so it can only be larger.
    """

    out = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        out["vmhwm"] = hwm * 1024
    return out


def current_rss() -> int:
    r"""The resident bytes of this process now."""

    rss = _status_kib("VmRSS")
    if rss is not None:
        return rss * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # best effort


def disk_bytes(path: str | os.PathLike) -> int:
    r"""The bytes of a file, or of all files under a directory (their sizes, not the
    blocks they occupy)."""

    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _filesystem(path: str) -> str:
    r"""The device and file system type holding :py:`path` (from ``/proc/mounts``)."""

    best, found = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, kind = line.split()[:3]
                if os.path.realpath(path).startswith(mount) and len(mount) > len(best):
                    best, found = mount, f"{kind} on {device}"
    except OSError:
        pass
    return found


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def describe_machine(workdir: str) -> Dict[str, str]:
    r"""A description of this machine and of the library versions benchmarked."""

    memory = _memory_gib()
    return {
        "cpu": f"{_cpu_model()}, {os.cpu_count()} cores",
        "memory": f"{memory:.1f} GiB" if memory else "unknown",
        "disk": _filesystem(workdir),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": ", ".join(
            f"{p} {_version(p)}" for p in ("jax", "jaxlib", "numpy", "orbax-checkpoint", "safetensors", "msgpack", "zlib-ng")
        ),
    }
