r"""CRC-32 checksums of stored bytes, computed beside the I/O that moves them.

Example:
    >>> f"{crc32(b'hello'):08x}"
    '3610a686'
"""

from __future__ import annotations

__all__ = ["crc32", "crc32_combine", "Checksums", "ChunkedCrc", "Piece", "INLINE_CRC_BYTES"]

import collections
import concurrent.futures

from typing import Dict, List, Sequence, Tuple

try:  # the same function as zlib's, several times faster (SIMD)
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover
    from zlib import crc32

try:  # zlib's crc32_combine, which Python's zlib does not expose
    from zlib_ng.zlib_ng import crc32_combine
except ImportError:  # pragma: no cover
    crc32_combine = None

#: Whole arrays below this are checksummed in the caller's thread (see
#: :class:`Checksums`; at zlib-ng's ~25 GB/s, 1 MiB takes 40 us).
INLINE_CRC_BYTES = 2**20

Piece = Tuple[str, memoryview]  #: consecutive bytes of a stored key


class ChunkedCrc:
    r"""The CRC-32 of each :py:`chunk_bytes` chunk of a stream of bytes (the last one
    shorter), and of the whole stream, fed in pieces of any size.

    Example:
        >>> c = ChunkedCrc(4)
        >>> c.add(memoryview(b'hello ')); c.add(memoryview(b'world'))
        >>> c.chunks() == [crc32(b'hell'), crc32(b'o wo'), crc32(b'rld')], c.whole() == crc32(b'hello world')
        (True, True)
    """

    def __init__(self, chunk_bytes: int):
        self.chunk_bytes = chunk_bytes
        self.done: List[int] = []
        self.current = self.filled = 0
        # Without crc32_combine, the whole stream's checksum is computed as well.
        self.running = 0 if crc32_combine is None else None

    def add(self, data: memoryview) -> None:
        if self.running is not None:
            self.running = crc32(data, self.running)
        while len(data):
            n = min(self.chunk_bytes - self.filled, len(data))
            self.current, self.filled, data = crc32(data[:n], self.current), self.filled + n, data[n:]
            if self.filled == self.chunk_bytes:
                self.done.append(self.current)
                self.current = self.filled = 0

    def chunks(self) -> List[int]:
        return self.done + ([self.current] if self.filled else [])

    def whole(self) -> int:
        if self.running is not None:
            return self.running
        value = 0
        for i, crc in enumerate(self.chunks()):
            last = i == len(self.done)  # the shorter last chunk, if any
            value = crc32_combine(value, crc, self.filled if last else self.chunk_bytes)
        return value


class Checksums:
    r"""The CRC-32 of each key, computed while the caller writes or reads the next bytes.

    Pieces go to one background thread, in submission order (:func:`crc32`
    releases the GIL), so that their checksums cost no time next to the I/O. Small
    arrays (below :data:`INLINE_CRC_BYTES`) are checksummed at once, in the caller's
    thread: the caller runs Python code between its system calls (describing arrays,
    placing them with JAX), and a thread checksumming thousands of small arrays would
    wait for the GIL after each one, longer than the checksum takes.

    Keys registered with :meth:`chunked` get the checksum of each chunk as well.

    Example:
        >>> with Checksums() as crcs:
        ...     crcs.chunked('b', 4)
        ...     crcs.submit([('a', memoryview(b'hello ')), ('a', memoryview(b'world'))])
        ...     crcs.submit([('b', memoryview(b'hello world'))])
        >>> crcs.hex('a') == crcs.hex('b') == f"{crc32(b'hello world'):08x}", crcs.chunk_hex('b')[-1] == f"{crc32(b'rld'):08x}"
        (True, True)
    """

    def __init__(self):
        self.values: Dict[str, int] = {}
        self.chunks: Dict[str, ChunkedCrc] = {}
        self.threaded: set = set()  # keys whose pieces go to the thread, to keep their order
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inox_io-crc32")
        self.pending: collections.deque = collections.deque()

    def submit(self, pieces: Sequence[Piece]) -> None:
        r"""Adds pieces of bytes, in order, to the checksums of their keys."""

        background = []
        for key, data in pieces:
            if key in self.threaded or key in self.chunks or len(data) >= INLINE_CRC_BYTES:
                self.values.setdefault(key, 0)
                self.threaded.add(key)
                background.append((key, data))
            else:  # a whole small array: only a large array's first piece is large
                self.values[key] = crc32(data, self.values.get(key, 0))
        if background:
            self.pending.append(self.pool.submit(self.update, background))

    def chunked(self, key: str, chunk_bytes: int) -> None:
        r"""Asks for the checksum of each :py:`chunk_bytes` chunk of :py:`key`, before
        any of its bytes are submitted."""

        self.chunks[key] = ChunkedCrc(chunk_bytes)

    def update(self, pieces: Sequence[Piece]) -> None:
        for key, data in pieces:
            if key in self.chunks:
                self.chunks[key].add(data)
            else:
                self.values[key] = crc32(data, self.values[key])

    def wait(self, pending: int = 0) -> None:
        r"""Waits until at most :py:`pending` jobs are left (which bounds the buffers
        kept alive for them), and raises their errors."""

        while len(self.pending) > pending:
            self.pending.popleft().result()

    def hex(self, key: str) -> str:
        return f"{self.chunks[key].whole() if key in self.chunks else self.values[key]:08x}"

    def chunk_hex(self, key: str) -> List[str]:
        return [f"{crc:08x}" for crc in self.chunks[key].chunks()]

    def __enter__(self) -> Checksums:
        return self

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
