r"""CRC-32 checksums of stored bytes, computed beside the I/O that moves them.

Example:
    >>> f"{crc32(b'hello'):08x}"
    '3610a686'
"""

from __future__ import annotations

__all__ = ["crc32", "Checksums", "Piece", "INLINE_CRC_BYTES"]

import collections
import concurrent.futures

from typing import Dict, Sequence, Tuple

try:  # the same function as zlib's, several times faster (SIMD)
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover
    from zlib import crc32

#: Whole arrays below this are checksummed in the caller's thread (see
#: :class:`Checksums`; at zlib-ng's ~25 GB/s, 1 MiB takes 40 us).
INLINE_CRC_BYTES = 2**20

Piece = Tuple[str, memoryview]  #: consecutive bytes of a stored key


class Checksums:
    r"""The CRC-32 of each key, computed while the caller writes or reads the next bytes.

    Pieces go to one background thread, in submission order (:func:`crc32`
    releases the GIL), so that their checksums cost no time next to the I/O. Small
    arrays (below :data:`INLINE_CRC_BYTES`) are checksummed at once, in the caller's
    thread: the caller runs Python code between its system calls (describing arrays,
    placing them with JAX), and a thread checksumming thousands of small arrays would
    wait for the GIL after each one, longer than the checksum takes.

    Example:
        >>> with Checksums() as crcs:
        ...     crcs.submit([('a', memoryview(b'hello ')), ('a', memoryview(b'world'))])
        >>> crcs.hex('a') == f"{crc32(b'hello world'):08x}"
        True
    """

    def __init__(self):
        self.values: Dict[str, int] = {}
        self.threaded: set = set()  # keys whose pieces go to the thread, to keep their order
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inox_io-crc32")
        self.pending: collections.deque = collections.deque()

    def submit(self, pieces: Sequence[Piece]) -> None:
        r"""Adds pieces of bytes, in order, to the checksums of their keys."""

        background = []
        for key, data in pieces:
            if key in self.threaded or len(data) >= INLINE_CRC_BYTES:
                self.values.setdefault(key, 0)
                self.threaded.add(key)
                background.append((key, data))
            else:  # a whole small array: only a large array's first piece is large
                self.values[key] = crc32(data, self.values.get(key, 0))
        if background:
            self.pending.append(self.pool.submit(self.update, background))

    def update(self, pieces: Sequence[Piece]) -> None:
        for key, data in pieces:
            self.values[key] = crc32(data, self.values[key])

    def wait(self, pending: int = 0) -> None:
        r"""Waits until at most :py:`pending` jobs are left (which bounds the buffers
        kept alive for them), and raises their errors."""

        while len(self.pending) > pending:
            self.pending.popleft().result()

    def hex(self, key: str) -> str:
        return f"{self.values[key]:08x}"

    def __enter__(self) -> Checksums:
        return self

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
