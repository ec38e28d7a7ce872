r"""The one exception family for every unreadable, damaged or mismatched checkpoint."""

from __future__ import annotations

__all__ = ["CheckpointError", "CHECKSUM_MISMATCH", "damage_error"]

import os

from typing import Mapping

#: The problem of an array whose bytes do not have the manifest's checksum.
CHECKSUM_MISMATCH = "checksum mismatch (corrupted data)"


class CheckpointError(Exception):
    r"""A checkpoint cannot be read, is damaged, or does not fit the requested tree.

    The message names the file and, where there is one, the key path at fault.

    Arguments:
        path: The checkpoint's path.
        message: What is wrong, and what was expected.
        key: The key path at fault, if any.

    Example:
        >>> raise CheckpointError('model.safetensors', 'shape (3,) expected, (4,) found', key='.w')
        Traceback (most recent call last):
          ...
        inox_io.errors.CheckpointError: model.safetensors: .w: shape (3,) expected, (4,) found
    """

    def __init__(self, path: str | os.PathLike, message: str, *, key: str | None = None):
        self.path = os.fspath(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + message)


def damage_error(path: str | os.PathLike, problems: Mapping[str, str], heading: str | None = None) -> CheckpointError:
    r"""One error for the problems of several arrays (by stored key): on one line, or
    listed under a heading.

    Example:
        >>> print(damage_error('m.msgpack', {'.a': CHECKSUM_MISMATCH, '.b': 'missing'}, 'damaged:'))
        m.msgpack: damaged:
          .a: checksum mismatch (corrupted data)
          .b: missing
    """

    entries = [f"{key}: {problem}" for key, problem in problems.items()]
    if heading is None:
        return CheckpointError(path, "; ".join(entries))
    return CheckpointError(path, "\n  ".join([heading, *entries]))
