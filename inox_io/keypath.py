r"""Key paths: the one grammar of the strings that name positions in a tree.

A key path is what :func:`jax.tree_util.keystr` prints (and ``inox.tree.prepr``
shows): a sequence of ``.attr``, ``[0]`` and ``['key']`` segments. Keys written by
other tools (``encoder.layer.0.weight``) start with a bare name, and are read as the
same grammar so that they map to themselves.

Example:
    >>> [s.text for s in split(".l1.value['w'][0]")]
    ['.l1', '.value', "['w']", '[0]']
    >>> is_key_path('.l1.value'), is_key_path('encoder.weight')
    (True, False)
"""

from __future__ import annotations

__all__ = ["Segment", "split", "is_key_path", "descendants"]

import ast
import bisect
import dataclasses
import re

from typing import List

# `.attr`, `[index]`, `['key']` or `["key"]`; a bare name only at the start.
_SEGMENT = re.compile(r"""\.?([^.\[\]]+)|\[('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\]]*)\]""")


@dataclasses.dataclass(frozen=True)
class Segment:
    r"""One step of a key path: its kind (``'.'`` for an attribute, ``'['`` for an
    index or a dictionary key), its key (unquoted), and its text as written."""

    kind: str
    key: str
    text: str


def split(path: str) -> List[Segment]:
    r"""Splits a key path into its segments.

    Raises:
        ValueError: if :py:`path` is not a key path.

    Example:
        >>> [(s.kind, s.key) for s in split(".l1.value['w'][0]")]
        [('.', 'l1'), ('.', 'value'), ('[', 'w'), ('[', '0')]
        >>> [s.text for s in split('encoder.layer.0.weight')]
        ['encoder', '.layer', '.0', '.weight']
    """

    segments, offset = [], 0
    while offset < len(path):
        match = _SEGMENT.match(path, offset) if offset == 0 or path[offset] in ".[" else None
        if match is None:
            raise ValueError(f"{path!r} is not a key path")
        attr, index = match.groups()
        if attr is not None:
            segments.append(Segment(".", attr, match.group()))
        else:
            try:
                key = ast.literal_eval(index) if index[:1] in "'\"" else index
            except (ValueError, SyntaxError):
                key = index
            segments.append(Segment("[", str(key), match.group()))
        offset = match.end()
    return segments


def is_key_path(name: str) -> bool:
    r"""Whether a stored name is a key path of a tree (as inox_io stores arrays) rather
    than a name of another library's convention (``wte.weight``)."""

    return name[:1] in (".", "[")


def descendants(keys: List[str], head: str) -> List[str]:
    r"""The keys of the sorted :py:`keys` that are :py:`head` or lie under it (followed
    by ``.`` or ``[``), found by bisection: a scan of every key for every tie would
    take quadratic time.

    Example:
        >>> descendants(sorted(['.a.value', '.a.value.w', '.a.value[0]', '.a.valuex', '.b']), '.a.value')
        ['.a.value', '.a.value.w', '.a.value[0]']
    """

    out = keys[bisect.bisect_left(keys, head) : bisect.bisect_right(keys, head)]
    for separator in ".[":
        # The keys starting with head + separator sort between it and head + the next character.
        begin = bisect.bisect_left(keys, head + separator)
        end = bisect.bisect_left(keys, head + chr(ord(separator) + 1))
        out += keys[begin:end]
    return out
