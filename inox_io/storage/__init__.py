r"""Where checkpoints are kept: local paths, and object stores (``gs://``, ``s3://``)
through tensorstore. The one seam between callers (the public functions, the
manager, the command line) and the places bytes live: :func:`locate` parses a
location, :func:`writing` and :func:`reading` give a layout a local path to work on.

Parts: :mod:`.location` (URLs), :mod:`.bucket` (the bytes, through tensorstore),
:mod:`.commit` (atomic checkpoints without rename), :mod:`.together` (the commit of a
checkpoint that several processes wrote), :mod:`.staging` (local folders standing for
remote checkpoints).

Example:
    >>> locate('gs://bucket/run/ckpt')
    ObjectURL(scheme='gs', bucket='bucket', key='run/ckpt')
"""

from __future__ import annotations

__all__ = ["ObjectURL", "locate", "parent_of", "writing", "reading", "staging_folder"]

from .location import ObjectURL, locate, parent_of
from .staging import reading, staging_folder, writing
