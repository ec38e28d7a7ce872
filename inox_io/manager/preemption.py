r"""Whether the job was told to stop: the step at which every process saves and exits.

Across processes, JAX's preemption service decides (it is on by default with
:func:`jax.distributed.initialize`, catches ``SIGTERM`` and the platform's notices,
and makes every process reach the same step). In one process, a ``SIGTERM`` handler,
installed by the first question, records the signal instead of dying of it.

Example:
    >>> import os, signal
    >>> watcher = PreemptionWatcher()
    >>> watcher.reached(10)
    False
    >>> os.kill(os.getpid(), signal.SIGTERM)
    >>> watcher.reached(11)
    True
    >>> watcher.close()
"""

from __future__ import annotations

__all__ = ["PreemptionWatcher"]

import jax
import signal
import threading

from typing import Any


class PreemptionWatcher:
    r"""Answers, at each step, whether the job reached its preemption point."""

    def __init__(self):
        self.signalled = False
        self._previous: Any = None
        self._installed = False

    def reached(self, step: int) -> bool:
        r"""Whether to save :py:`step` and stop; collective across processes (every
        process asks at every step)."""

        if jax.process_count() > 1:
            # JAX exports no public name for its preemption service.
            sync = jax._src.distributed.global_state.preemption_sync_manager
            if sync is None:
                raise RuntimeError(
                    "JAX's preemption service is off: enable jax_enable_preemption_service "
                    "before jax.distributed.initialize()"
                )
            return bool(sync.reached_sync_point(int(step)))
        if not self._installed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._record)
            self._installed = True
        return self.signalled

    def _record(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def close(self) -> None:
        r"""Gives ``SIGTERM`` back to the handler it had."""

        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
