r"""Where a checkpoint is: a local path, or an object-store URL (``gs://bucket/key``,
``s3://bucket/key``). Any other ``scheme://`` is refused, never taken as a local path.

Example:
    >>> url = locate('s3://bucket/runs/model.safetensors')
    >>> url.scheme, url.bucket, url.key, url.name
    ('s3', 'bucket', 'runs/model.safetensors', 'model.safetensors')
    >>> str(url.parent / '100'), locate('ckpt/model.msgpack')
    ('s3://bucket/runs/100', PosixPath('ckpt/model.msgpack'))
    >>> locate('http://host/model.safetensors')
    Traceback (most recent call last):
      ...
    ValueError: http://host/model.safetensors: unsupported URL scheme 'http'; use a local path, gs://bucket/path, s3://bucket/path
"""

from __future__ import annotations

__all__ = ["ObjectURL", "SCHEMES", "locate", "parent_of"]

import dataclasses
import os
import re

from pathlib import Path

#: The object stores, by URL scheme: the tensorstore kvstore driver of each.
SCHEMES = {"gs": "gcs", "s3": "s3"}

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# What pathlib makes of a URL ('s3://b/x' becomes 's3:/b/x'): refused, not written to.
_MANGLED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


@dataclasses.dataclass(frozen=True)
class ObjectURL:
    r"""An object (or a prefix) in a bucket. Its key has no leading or trailing ``/``.

    Example:
        >>> url = ObjectURL('gs', 'bucket', 'runs')
        >>> str(url / 'model.safetensors'), (url / 'a/b').parent.key
        ('gs://bucket/runs/model.safetensors', 'runs/a')
    """

    scheme: str
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"

    def __fspath__(self) -> str:  # for messages that format a path: the URL
        return str(self)

    def __truediv__(self, name: str) -> ObjectURL:
        return ObjectURL(self.scheme, self.bucket, f"{self.key}/{name}".strip("/"))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectURL:
        return ObjectURL(self.scheme, self.bucket, self.key.rsplit("/", 1)[0] if "/" in self.key else "")


def locate(path: str | os.PathLike) -> Path | ObjectURL:
    r"""Parses a location: an :class:`ObjectURL` for ``gs://`` and ``s3://``, else a
    local :class:`~pathlib.Path`.

    Raises:
        ValueError: for another URL scheme, a URL without bucket, or a path that is a
            URL mangled by :class:`~pathlib.Path` (``s3:/bucket/x``).
    """

    if isinstance(path, ObjectURL):
        return path
    text = os.fspath(path)
    match = _URL.match(text) if isinstance(text, str) else None
    if match is None:
        mangled = _MANGLED.match(text) if isinstance(text, str) else None
        if mangled is not None and not isinstance(path, str) and mangled.group(1) in SCHEMES:
            raise ValueError(
                f"{text}: a URL made into a local path (pathlib folds '//'); pass the URL as a string, "
                f"{mangled.group(1)}://..."
            )
        return Path(path)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://bucket/path" for s in SCHEMES)
        raise ValueError(f"{text}: unsupported URL scheme {scheme!r}; use a local path, {known}")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{text}: no bucket; expected {scheme}://bucket/path")
    return ObjectURL(scheme, bucket, key.strip("/"))


def parent_of(where: Path | ObjectURL) -> Path | ObjectURL:
    r"""The folder (or bucket prefix) holding a location; a local path is made absolute
    first, so that the parent of ``ckpt`` is the working directory.

    Example:
        >>> parent_of(locate('s3://bucket/run/5')), parent_of(Path('/runs/5/'))
        (ObjectURL(scheme='s3', bucket='bucket', key='run'), PosixPath('/runs'))
    """

    if isinstance(where, ObjectURL):
        return where.parent
    return Path(os.path.abspath(where)).parent
