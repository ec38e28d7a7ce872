r"""Agreement between the processes of a job, through the key-value store and the
barriers of JAX's distributed runtime (:func:`jax.distributed.initialize`).

Nothing here runs a device collective: saves in background threads coordinate while
the training loop runs its own collectives, which a second stream of collectives
from another thread could deadlock. Every function is called by every process, in the
same order *within a scope* (:func:`scope`): a background save opens a scope of its
own (its directory and step), so that its names never depend on what the training
thread does meanwhile. In a single process, every function returns at once.

Waits are bounded by :func:`timeout_seconds` (``INOX_IO_TIMEOUT_S`` in the
environment, 600 s by default): a process that died makes the others fail, not hang.

Example:
    >>> with scope('example'):
    ...     broadcast('token', 7), gather('ok', True)
    (7, [True])
    >>> agree('/tmp/ckpt', None, 'done')  # no error here, nor, in one process, anywhere else
    ['done']
"""

from __future__ import annotations

__all__ = [
    "agree", "barrier", "broadcast", "gather", "is_primary", "name", "own_folders", "in_own_folders", "scope", "timeout_seconds",
]  # fmt: skip

import contextlib
import itertools
import json
import jax
import os
import threading

from pathlib import Path
from typing import Any, Dict, Iterator, List

from .errors import CheckpointError

DEFAULT_TIMEOUT_S = 600

_names = threading.local()  # each thread's stack of scopes, and its own_folders depth
_counters: Dict[str, Iterator[int]] = {}
_counters_lock = threading.Lock()


def timeout_seconds() -> float:
    r"""How long a process waits for the others (``INOX_IO_TIMEOUT_S``, 600 s by default)."""

    return float(os.environ.get("INOX_IO_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def is_primary() -> bool:
    r"""Whether this process is the one that commits (process 0)."""

    return jax.process_index() == 0


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    r"""Names the agreements made inside, in this thread, after :py:`name`."""

    stack = getattr(_names, "stack", None)
    if stack is None:
        stack = _names.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


@contextlib.contextmanager
def own_folders() -> Iterator[None]:
    r"""Inside, in this thread, each process writes a checkpoint directory into a
    folder of its own (its staging folder for an object store, on its own disk), not
    into one folder that every process sees: a layout then makes its temporary
    directory and puts it in place on every process, and process 0 adds what it writes
    alone (the manifest). What gathers the folders (an upload) comes after.

    Example:
        >>> with own_folders():
        ...     in_own_folders()
        True
        >>> in_own_folders()
        False
    """

    _names.own = getattr(_names, "own", 0) + 1
    try:
        yield
    finally:
        _names.own -= 1


def in_own_folders() -> bool:
    r"""Whether this thread is inside :func:`own_folders`."""

    return getattr(_names, "own", 0) > 0


def name(what: str) -> str:
    r"""A name for the next agreement about :py:`what`, the same on every process
    (each call in a scope gets the next one), e.g. for another library's barriers."""

    prefix = "/".join(getattr(_names, "stack", None) or ["inox_io"])
    with _counters_lock:
        counter = _counters.setdefault(f"{prefix}/{what}", itertools.count())
        n = next(counter)
    return f"{prefix}/{what}/{n}"


def _client() -> Any:
    # The runtime's client is what orbax and JAX's own helpers use; JAX exports no
    # public name for it.
    client = jax._src.distributed.global_state.client
    if client is None:
        raise RuntimeError(
            f"{jax.process_count()} processes without jax.distributed: call "
            "jax.distributed.initialize() first, on every process"
        )
    return client


def barrier(what: str) -> None:
    r"""Waits until every process gets here."""

    if jax.process_count() > 1:
        _client().wait_at_barrier(name(what), int(timeout_seconds() * 1000))


def broadcast(what: str, value: Any) -> Any:
    r"""Process 0's :py:`value` (JSON), on every process."""

    if jax.process_count() == 1:
        return value
    key = name(what)
    if is_primary():
        _client().key_value_set(key, json.dumps(value))
        return value
    return json.loads(_client().blocking_key_value_get(key, int(timeout_seconds() * 1000)))


def gather(what: str, value: Any) -> List[Any]:
    r"""Every process's :py:`value` (JSON), by process index, on every process."""

    if jax.process_count() == 1:
        return [value]
    key, client = name(what), _client()
    client.key_value_set(f"{key}/{jax.process_index()}", json.dumps(value))
    wait = int(timeout_seconds() * 1000)
    return [json.loads(client.blocking_key_value_get(f"{key}/{i}", wait)) for i in range(jax.process_count())]


def agree(path: str | os.PathLike, error: BaseException | None, value: Any = None) -> List[Any]:
    r"""Raises this process's :py:`error`, or on every other process the same
    :class:`CheckpointError` naming the first process that failed and its error, so
    that no process reports success alone. Also a barrier. Returns every process's
    :py:`value` (JSON), by process index: what the processes send each other once
    they agree, in the same round.
    """

    outcome = None if error is None else f"{type(error).__name__}: {error}"
    everyone = gather("outcome", [outcome, value])
    failures = [(i, o) for i, (o, _) in enumerate(everyone) if o is not None]
    if error is not None:
        raise error
    if failures:
        process, message = failures[0]
        where = path if isinstance(path, os.PathLike) else Path(path)  # a URL stays one
        raise CheckpointError(where, f"failed on process {process}: {message}; nothing was committed")
    return [v for _, v in everyone]
