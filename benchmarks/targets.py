r"""The performance targets of inox_io, checked against one run's results.

Timing targets apply to inox_io's single-file formats (safetensors, msgpack). The
directory format stores its arrays through orbax, for arrays that span processes, and
so inherits orbax's costs: it is shown, not held to these targets.
"""

from __future__ import annotations

__all__ = ["Check", "check", "median", "ratio"]

import dataclasses
import statistics

from typing import Any, Dict, List

MB = 10**6


@dataclasses.dataclass
class Check:
    r"""One target: what was measured, against what limit, and whether it holds."""

    case: str
    what: str
    value: float
    limit: float
    unit: str = "x"
    at_least: bool = False  #: whether the value must reach the limit rather than stay under

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        sign = ">=" if self.at_least else "<="
        digits = 2 if self.unit == "x" else 0
        return (
            f"{verdict}  ({self.case}) {self.what}: {self.value:.{digits}f}{self.unit} "
            f"(target {sign} {self.limit:.{digits}f}{self.unit})"
        )


def median(values: List[float] | None) -> float | None:
    return statistics.median(values) if values else None


def ratio(methods: Dict[str, Any], method: str, base: str, op: str) -> float | None:
    r"""How many times as long :py:`method` takes as :py:`base` to :py:`op`.

    Methods timed side by side in one process (not orbax's, see
    :data:`benchmarks.run.GROUPS`) give the median of their repetitions' ratios: a slow
    moment of this shared machine then slows both sides of a ratio. Otherwise, the
    ratio of their medians.
    """

    a, b = methods.get(method, {}).get(op), methods.get(base, {}).get(op)
    if not a or not b:
        return None
    if len(a) == len(b) and ("orbax" in method) == ("orbax" in base):
        return statistics.median(x / y for x, y in zip(a, b))
    return statistics.median(a) / statistics.median(b)


def _single_file(methods: Dict[str, Any]) -> List[str]:
    return [m for m in methods if m in ("inox_io-safetensors", "inox_io-msgpack")]


def _ratio_check(out: List[Check], case: str, what: str, value: float | None, limit: float, at_least: bool = False) -> None:
    if value is not None:
        out.append(Check(case, what, value, limit, at_least=at_least))


def _memory_checks(out: List[Check], case: str, result: Dict[str, Any], methods: List[str]) -> None:
    for method in methods:
        for op in ("save", "load"):
            mem = result.get("memory", {}).get(method, {}).get(op)
            if not mem:
                continue
            used = mem["used"]
            limit = 1.1 * mem["model_bytes"] + 100 * MB
            out.append(Check(case, f"{method} {op}: peak memory above idle", used / MB, limit / MB, " MB"))


def check(results: Dict[str, Any]) -> List[Check]:
    r"""Every target that the results allow checking."""

    out: List[Check] = []
    for case in ("a", "b", "c"):
        if case not in results:
            continue
        methods = results[case]["methods"]
        for m in _single_file(methods):
            for op in ("save", "load"):
                if case == "a":
                    _ratio_check(out, case, f"{m} {op} / raw {op}", ratio(methods, m, "raw", op), 1.15)
                    _ratio_check(out, case, f"{m} {op} / safetensors {op}", ratio(methods, m, "safetensors", op), 1.1)
                if case == "b":
                    speedup = ratio(methods, "orbax", m, op)
                    _ratio_check(out, case, f"orbax {op} / {m} {op}", speedup, 20, at_least=True)
                    _ratio_check(out, case, f"{m} {op} / raw {op}", ratio(methods, m, "raw", op), 1.5)
        if case == "c":
            named = ratio(methods, "inox_io-named", "inox_io-safetensors", "load")
            _ratio_check(out, case, "inox_io-named load / inox_io-safetensors load", named, 1.15)
            unique = results[case]["unique_bytes"]
            for m in [m for m in methods if m.startswith("inox_io-")]:
                disk = methods[m].get("disk")
                if disk:
                    out.append(Check(case, f"{m} bytes on disk / unique bytes", disk / unique, 1.01))
            # Informative: these write the tie twice. orbax compresses, so it is compared
            # with inox_io's orbax directory format, which compresses alike.
            pairs = [("safetensors", None), ("npy-leaves", None), ("orbax", "inox_io-orbax")]
            for m, reference in pairs:
                disk = methods.get(m, {}).get("disk")
                base = methods.get(reference, {}).get("disk") if reference else unique
                if disk and base:
                    what = f"{m} (writes the tie twice) bytes on disk / {reference or 'unique'} bytes"
                    out.append(Check(case, what, disk / base, 1.25, at_least=True))
        _memory_checks(out, case, results[case], _single_file(methods))

    if "d" in results:
        d = results["d"]
        blocked, sync = median(d.get("blocked")), median(d.get("sync"))
        if blocked is not None and sync:
            out.append(Check("d", "async save: caller blocked / sync save", blocked / sync, 0.10))
    return out
