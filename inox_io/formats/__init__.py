r"""Storage formats, chosen by path: ``*.safetensors``, ``*.msgpack``, or a directory."""

from __future__ import annotations

__all__ = ["FORMATS", "format_for", "register"]

import os

from pathlib import Path
from typing import List

from .base import Format, Reader, Target
from .hf_index import HFIndexFormat
from .msgpack_file import MsgpackFormat
from .orbax_dir import OrbaxDirectoryFormat
from .safetensors_file import SafetensorsFormat

# The directory format comes last: a '.safetensors' or '.msgpack' suffix always wins.
FORMATS: List[Format] = [SafetensorsFormat(), HFIndexFormat(), MsgpackFormat(), OrbaxDirectoryFormat()]


def register(fmt: Format) -> None:
    r"""Adds a format; it is tried before the ones already registered."""

    FORMATS.insert(0, fmt)


def format_for(path: str | os.PathLike) -> Format:
    r"""Returns the format of a path, from its suffix (or being a directory);
    ``*.safetensors.index.json`` is a sharded safetensors checkpoint.

    Example:
        >>> format_for('model.safetensors').name
        'safetensors'
    """

    path = Path(path)
    for fmt in FORMATS:
        if fmt.matches(path):
            return fmt
    raise ValueError(
        f"{path}: unknown checkpoint format; use a path ending in "
        + ", ".join(f"'.{f.name}'" for f in FORMATS if f.name in ("safetensors", "msgpack"))
        + " or a directory"
    )
