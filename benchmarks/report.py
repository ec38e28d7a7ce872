r"""The results table (plain text for the terminal, Markdown for the docs)."""

from __future__ import annotations

__all__ = ["rows", "text_table", "markdown"]

from typing import Any, Dict, List

from .targets import MB, Check, median, ratio

HEADER = [
    "case", "method", "save s", "x raw", "load s", "x raw", "load 8dev s", "x raw",
    "disk MB", "x unique", "save mem MB", "x model", "load mem MB", "x model",
]  # fmt: skip


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}" if value < 0.1 else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _memory(mem: Dict[str, Any] | None) -> List[str]:
    if not mem:
        return ["-", "-"]
    used = mem["used"]
    return [f"{used / MB:.0f}", f"{used / mem['model_bytes']:.2f}"]


def rows(results: Dict[str, Any]) -> List[List[str]]:
    r"""One row per case and method: median times, ratios to raw (see
    :func:`benchmarks.targets.ratio`), disk bytes and peak memory."""

    out = []
    for case in ("a", "b", "c"):
        if case not in results:
            continue
        result = results[case]
        methods = result["methods"]
        for name, m in methods.items():
            save, load, sharded = (median(m.get(op)) for op in ("save", "load", "load_sharded"))
            disk = m.get("disk")
            memory = result.get("memory", {}).get(name, {})
            out.append(
                [
                    case,
                    name,
                    _seconds(save),
                    _ratio(ratio(methods, name, "raw", "save")),
                    _seconds(load),
                    _ratio(ratio(methods, name, "raw", "load")),
                    _seconds(sharded),
                    _ratio(ratio(methods, name, "raw", "load_sharded")),
                    "-" if disk is None else f"{disk / MB:.1f}",
                    "-" if disk is None else f"{disk / result['unique_bytes']:.3f}",
                    *_memory(memory.get("save")),
                    *_memory(memory.get("load")),
                ]
            )
    return out


def _async_lines(results: Dict[str, Any]) -> List[str]:
    d = results.get("d")
    if not d:
        return []
    sync, blocked, total = (median(d.get(k)) for k in ("sync", "blocked", "total"))
    return [
        f"(d) {d['how']}, case a's data: sync save {_seconds(sync)} s; async save blocks the caller "
        f"{_seconds(blocked)} s ({blocked / sync:.1%} of the sync save), finishes after {_seconds(total)} s"
    ]


def _retry_lines(results: Dict[str, Any]) -> List[str]:
    r"""Which repetitions were measured again (see :func:`benchmarks.worker._measured`)."""

    counts = [
        f"{case} {name} {op} {len(times)}"
        for case in ("a", "b", "c")
        for name, m in results.get(case, {}).get("methods", {}).items()
        for op, times in m.get("discarded", {}).items()
        if times
    ]
    if not counts:
        return []
    return ["Repetitions measured again because the machine reclaimed memory while they ran: " + ", ".join(counts)]


def text_table(results: Dict[str, Any], checks: List[Check]) -> str:
    r"""The table, the async line and the target verdicts, for a terminal."""

    table = [HEADER] + rows(results)
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [""] + _async_lines(results) + _retry_lines(results) + [""] + [c.line() for c in checks]
    passed = sum(c.passed for c in checks)
    lines.append(f"{passed}/{len(checks)} targets met")
    return "\n".join(lines)


def markdown(results: Dict[str, Any], checks: List[Check], settings: Dict[str, Any]) -> str:
    r"""The machine, the settings, the table and the verdicts, as Markdown."""

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    lines += [""] + [f"{line}\n" for line in _async_lines(results) + _retry_lines(results)]
    lines += ["", "Targets:", ""] + [f"- {c.line()}" for c in checks]
    head = [f"- {k}: {v}" for k, v in settings.items()]
    return "\n".join(head + [""] + lines) + "\n"
