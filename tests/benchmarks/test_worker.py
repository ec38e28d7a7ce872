r"""How the benchmark treats repetitions that the machine disturbed (memory handed back
to its host while they ran): measured again when short, and reported."""

from __future__ import annotations

import sys
import time

from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import report, system, worker  # noqa: E402


class Machine:
    r"""A fake count of the memory reported to the host, which grows during the
    attempts listed in :py:`disturbed` (numbered from 1)."""

    def __init__(self, monkeypatch, disturbed: set):
        self.count, self.attempts, self.disturbed = 0, 0, disturbed
        monkeypatch.setattr(system, "memory_reported_kib", lambda: self.count)

    def operation(self, seconds: float = 0.0):
        def run():
            self.attempts += 1
            time.sleep(seconds)
            if self.attempts in self.disturbed:
                self.count += 1024

        return run


def test_a_disturbed_attempt_is_prepared_and_measured_again(monkeypatch):
    machine = Machine(monkeypatch, disturbed={1, 2})
    prepared = []
    elapsed, discarded = worker._measured(lambda: prepared.append(1), machine.operation(), retries=5)
    assert machine.attempts == 3 and len(discarded) == 2
    assert len(prepared) == 3  # before each attempt: the page cache emptied again


def test_the_last_attempt_counts_when_every_one_is_disturbed(monkeypatch):
    machine = Machine(monkeypatch, disturbed={1, 2, 3, 4})
    elapsed, discarded = worker._measured(lambda: None, machine.operation(), retries=2)
    assert machine.attempts == 3 and len(discarded) == 2


def test_without_the_counter_every_time_is_kept(monkeypatch):
    monkeypatch.setattr(system, "memory_reported_kib", lambda: None)
    calls = []
    elapsed, discarded = worker._measured(lambda: None, lambda: calls.append(1), retries=5)
    assert len(calls) == 1 and discarded == []


def test_only_operations_once_fast_are_measured_again(monkeypatch):
    monkeypatch.setattr(worker, "SHORT_SECONDS", 0.05)
    machine = Machine(monkeypatch, disturbed={1, 2, 3, 5, 6})
    stopwatch = worker.Stopwatch(warmup=1)

    fast = {"load": [], "discarded": {"load": []}}
    # The warm-up (attempt 1): nothing is known of the operation yet; its time is not kept.
    stopwatch.time(fast, "load", 0, lambda: None, machine.operation())
    assert machine.attempts == 1 and fast["load"] == []
    # Known to be fast now: attempts 2 and 3 are disturbed, attempt 4 counts.
    stopwatch.time(fast, "load", 1, lambda: None, machine.operation())
    assert machine.attempts == 4 and len(fast["load"]) == 1 and len(fast["discarded"]["load"]) == 2

    # Never under SHORT_SECONDS: attempt 6 is disturbed, and kept all the same.
    slow = {"save": [], "discarded": {"save": []}}
    stopwatch.time(slow, "save", 0, lambda: None, machine.operation(0.1))
    stopwatch.time(slow, "save", 1, lambda: None, machine.operation(0.1))
    assert machine.attempts == 6 and len(slow["save"]) == 1 and slow["discarded"]["save"] == []


def test_the_report_lists_the_discarded_attempts():
    methods = {"raw": {"discarded": {"load": [2.0, 1.9], "save": []}}, "x": {"discarded": {"load": []}}}
    (line,) = report._retry_lines({"a": {"methods": methods}})
    assert line.endswith(": a raw load 2")
    assert report._retry_lines({"a": {"methods": {"x": {"discarded": {"load": []}}}}}) == []
