r"""Counts of the bytes a process moved, which benchmarks and tests read before and
after an operation: work is counted, never timed, in tests.

Example:
    >>> read = ByteCounter()
    >>> read.add(10); read.add(5)
    >>> read.value
    15
"""

from __future__ import annotations

__all__ = ["ByteCounter"]

import threading


class ByteCounter:
    r"""A count of bytes, added to from any thread."""

    def __init__(self):
        self.value = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.value += n
