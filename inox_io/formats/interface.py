r"""The storage interface: what every layout (a module of :mod:`inox_io.formats`) does,
and what callers may ask of one. Callers never test which layout they hold: what
differs between layouts is said here, by attributes and methods.

Example:
    >>> from inox_io.formats import format_named
    >>> fmt = format_named('safetensors')
    >>> fmt.item_path(Path('step'), 'model'), fmt.options
    (PosixPath('step/model.safetensors'), ())
"""

from __future__ import annotations

__all__ = ["Target", "Reader", "Format"]

import abc
import dataclasses
import jax
import numpy as np

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Tuple

from ..dtypes import dtype_name
from ..manifest import ArrayInfo, Manifest


@dataclasses.dataclass(frozen=True)
class Target:
    r"""Where a stored array goes: the sharding to place it on (:py:`None` for the
    default device), after an optional :py:`transform` of its host (NumPy) array, in
    storage dtype and shape (e.g. the ``from_file`` half of :data:`inox_io.TRANSPOSE`).
    PRNG keys are never transformed.

    Example:
        >>> info = ArrayInfo('float32', (2, 3), 24)
        >>> info, x = Target(transform=np.transpose).apply(info, np.zeros((2, 3), np.float32))
        >>> info.shape, x.shape
        ((3, 2), (3, 2))
    """

    sharding: jax.sharding.Sharding | None = None
    transform: Callable[[np.ndarray], Any] | None = None

    def apply(self, info: ArrayInfo, host: np.ndarray) -> Tuple[ArrayInfo, np.ndarray]:
        r"""The array to place, and its description."""

        if self.transform is None or info.key_impl:
            return info, host
        out = np.asarray(self.transform(host))
        return ArrayInfo(dtype_name(out.dtype), tuple(out.shape), out.nbytes), out


class Reader(abc.ABC):
    r"""An open checkpoint. Its arrays are read by stored key (the keys of
    :py:`manifest.arrays`)."""

    path: Path
    manifest: Manifest
    #: The string metadata a file holds beside the manifest, where its layout has a place
    #: for it (safetensors' ``__metadata__``, which other tools write too).
    metadata: Mapping[str, str] = {}

    @abc.abstractmethod
    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, Any]:
        r"""Reads the arrays of :py:`targets` (stored keys), each byte once, and places
        them.

        Raises:
            CheckpointError: if :py:`verify` and a checksum does not match.
        """

    @abc.abstractmethod
    def verify(self, keys: Iterable[str] | None = None) -> Dict[str, str]:
        r"""Checks the stored bytes of :py:`keys` (all by default) against the manifest;
        returns the problems found, by stored key."""

    @abc.abstractmethod
    def host(self, key: str) -> np.ndarray:
        r"""Returns the stored array of :py:`key` on the host, in storage dtype/shape."""

    def compressed_bytes(self) -> int | None:
        r"""The bytes its arrays are stored in, where the layout compresses them (so that
        they may declare more than they store); :py:`None` where they are stored raw,
        and a reader refuses to read past what its files hold."""

        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Format(abc.ABC):
    r"""A storage layout: recognizes its paths, writes and opens checkpoints."""

    name: str
    #: What follows an item's name in a folder (see :meth:`item_path`).
    suffix: str
    #: What the layout is, for messages ("single safetensors files").
    description: str
    #: The write options it takes (keyword arguments of :meth:`write`).
    options: Tuple[str, ...] = ()
    #: Whether every process of a job takes part in :meth:`write`, each writing its own
    #: shards (arrays may span processes); otherwise one process writes whole arrays.
    collective: bool = False

    @abc.abstractmethod
    def matches(self, path: Path) -> bool:
        r"""Whether :py:`path` (existing or not) is in this format."""

    def reads_in_ranges(self, name: str) -> bool:
        r"""Whether a file of this name inside a checkpoint is one that readers read in
        byte ranges, each process only those it needs, announcing them first or reading
        them through tensorstore in the bucket (see :mod:`inox_io.storage.ranges`):
        fetched from object storage only where read."""

        return False

    def item_path(self, folder: Path, name: str) -> Path:
        r"""Where a checkpoint called :py:`name` goes in :py:`folder` (a manager's step)."""

        return folder / f"{name}{self.suffix}"

    def parse_options(self, path: Path, **options: Any) -> Dict[str, Any]:
        r"""Checks and normalizes the write options (those of :py:`options` only)."""

        return dict(options)

    @abc.abstractmethod
    def write(
        self,
        path: Path,
        manifest: Manifest,
        arrays: Mapping[str, Any],
        *,
        overwrite: bool,
        extra: Mapping[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
        **options: Any,
    ) -> None:
        r"""Writes the arrays under their keys with the manifest, atomically, and fills
        in the checksums of :py:`manifest`.

        Arguments:
            extra: String entries for the file's own metadata (see :attr:`Reader.metadata`),
                for other tools' sake: they repeat what the manifest says (dropped names,
                user metadata). Layouts without such a place leave them out.
            progress: Called from time to time, while the arrays are written, with the
                bytes of arrays this process wrote so far (never more than
                :py:`manifest.nbytes`): a progress bar's. From any thread.
            options: As :meth:`parse_options` returned them.
        """

    @abc.abstractmethod
    def open(self, path: Path) -> Reader:
        r"""Opens a checkpoint for reading.

        Raises:
            CheckpointError: if the file is malformed.
        """
