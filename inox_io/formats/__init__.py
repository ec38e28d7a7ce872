r"""Storage layouts, chosen by path: ``*.safetensors``, ``*.msgpack``,
``*.safetensors.index.json``, or a directory. Each is a module behind the interface of
:mod:`inox_io.formats.interface`; this module finds the one a path or a name asks for.

Example:
    >>> format_for('model.safetensors').name, format_named('msgpack').suffix
    ('safetensors', '.msgpack')
"""

from __future__ import annotations

__all__ = [
    "FORMATS", "Format", "Reader", "Target", "format_for", "format_named", "format_of", "register", "open_checkpoint", "read_in_ranges",
    "write_options",
]  # fmt: skip

import os

from pathlib import Path
from typing import Any, Dict, List

from .hf_index import HFIndexFormat
from .interface import Format, Reader, Target
from .msgpack_file import MsgpackFormat
from .orbax_dir import OrbaxDirectoryFormat
from .orbax_native import OrbaxNativeFormat
from .safetensors_file import SafetensorsFormat
from .sharded_dir import ShardedDirectoryFormat

# The directory formats come last: a '.safetensors' or '.msgpack' suffix always wins.
# The sharded layout takes new directories and its own; orbax, those its manifest names.
# Directories that orbax itself wrote (orbax's files, no manifest) come before them,
# which would take any directory as a new save's target; a directory with a manifest
# keeps its inox_io layout.
FORMATS: List[Format] = [
    SafetensorsFormat(), HFIndexFormat(), MsgpackFormat(), OrbaxNativeFormat(), ShardedDirectoryFormat(),
    OrbaxDirectoryFormat(),
]  # fmt: skip


def register(fmt: Format) -> None:
    r"""Adds a format; it is tried before the ones already registered."""

    FORMATS.insert(0, fmt)


def format_for(path: str | os.PathLike) -> Format:
    r"""Returns the format of a path, from its suffix (or being a directory);
    ``*.safetensors.index.json`` is a sharded safetensors checkpoint.

    Raises:
        ValueError: for a path no format takes.
    """

    path = Path(path)
    for fmt in FORMATS:
        if fmt.matches(path):
            return fmt
    raise ValueError(
        f"{path}: unknown checkpoint format; use a path ending in "
        + ", ".join(repr(f.suffix) for f in FORMATS if f.suffix)
        + " or a directory"
    )


def format_named(name: str) -> Format:
    r"""Returns the format of a name (``'safetensors'``, ``'orbax'``, ...).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """

    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    known = ", ".join(repr(f.name) for f in FORMATS)
    raise ValueError(f"unknown item format {name!r}; known formats: {known}")


def read_in_ranges(name: str) -> bool:
    r"""Whether a file of this name is read in byte ranges by its layout's reader
    (:meth:`Format.reads_in_ranges`).

    Example:
        >>> read_in_ranges('shards-00000-of-00002.bin'), read_in_ranges('manifest.json')
        (True, False)
    """

    return any(fmt.reads_in_ranges(name) for fmt in FORMATS)


def format_of(path: str | os.PathLike, name: str | None = None) -> Format:
    r"""The format of a path (:func:`format_for`), or the one :py:`name` names among
    the formats of such paths, so that the path reads back as written.

    Example:
        >>> format_of('ckpt').name, format_of('ckpt', 'orbax').name
        ('sharded', 'orbax')
        >>> format_of('model.msgpack', 'orbax')
        Traceback (most recent call last):
          ...
        ValueError: model.msgpack: format 'orbax' writes checkpoint directories, not such paths

    Raises:
        ValueError: for a path no format takes, an unknown name, or a format that does
            not take such paths.
    """

    fmt = format_for(path)
    if name is None:
        return fmt
    chosen = format_named(name)
    if chosen.suffix != fmt.suffix:
        raise ValueError(f"{path}: format {name!r} writes {chosen.description}, not such paths")
    return chosen


def open_checkpoint(path: str | os.PathLike) -> Reader:
    r"""Opens the checkpoint at :py:`path`, whatever its layout.

    Raises:
        ValueError: for a path no format takes.
        FileNotFoundError: if there is nothing at :py:`path`.
        CheckpointError: if the checkpoint is malformed.
    """

    path = Path(path)
    fmt = format_for(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return fmt.open(path)


def write_options(fmt: Format, path: Path, **options: Any) -> Dict[str, Any]:
    r"""Checks the write options given (those not :py:`None`) against what :py:`fmt`
    takes, and normalizes them.

    Example:
        >>> write_options(format_for('m.safetensors'), Path('m.safetensors'), max_shard_size='1GB')
        Traceback (most recent call last):
          ...
        ValueError: m.safetensors: max_shard_size is for sharded checkpoints (Hugging Face index), paths ending in '.safetensors.index.json'
    """

    given = {name: value for name, value in options.items() if value is not None}
    for name in given:
        if name not in fmt.options:
            takers = [f for f in FORMATS if name in f.options]
            where = ", ".join(f"{f.description}, paths ending in {f.suffix!r}" for f in takers) or "no format"
            raise ValueError(f"{path}: {name} is for {where}")
    return fmt.parse_options(path, **given) if fmt.options else {}
