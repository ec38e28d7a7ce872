r"""The one exception family for every unreadable, damaged or mismatched checkpoint."""

from __future__ import annotations

__all__ = ["CheckpointError", "CHECKSUM_MISMATCH", "MISSING_CHECKSUM", "damage_error", "unchecked_error"]

import os

from typing import Mapping, Sequence

#: The problem of an array whose bytes do not have the manifest's checksum.
CHECKSUM_MISMATCH = "checksum mismatch (corrupted data)"
#: The problem of an array without checksum, where the manifest does not say why.
MISSING_CHECKSUM = "no checksum (crc32 null), and the manifest does not say why (crafted?)"


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


def unchecked_error(path: str | os.PathLike, keys: Sequence[str]) -> CheckpointError:
    r"""The error of a verifying read of arrays without checksums, where the manifest
    does not say that none could be computed (see ``docs/reliability.md``).

    Example:
        >>> print(unchecked_error('m.safetensors', ['.a', '.b']))
        m.safetensors: 2 arrays without checksum (crc32 null), .a the first, and the manifest does not say why (crafted?); pass verify=False to read them unchecked
    """

    count = f"{len(keys)} arrays" if len(keys) != 1 else "1 array"
    return CheckpointError(
        path,
        f"{count} without checksum (crc32 null), {keys[0]} the first, and the manifest does not say why "
        "(crafted?); pass verify=False to read them unchecked",
    )
