r"""Where checkpoints are kept: local paths, and object stores (``gs://``, ``s3://``)
through tensorstore. The one seam between callers (the public functions, the
manager, the command line) and the places bytes live: :func:`locate` parses a
location, :func:`writing` and :func:`reading` give a layout a local path to work on.

Parts: :mod:`.location` (URLs), :mod:`.bucket` (the bytes, through tensorstore),
:mod:`.commit` (atomic checkpoints without rename), :mod:`.staging` (local folders
standing for remote checkpoints).

Example:
    >>> locate('gs://bucket/run/ckpt')
    ObjectURL(scheme='gs', bucket='bucket', key='run/ckpt')
"""

from __future__ import annotations

__all__ = ["ObjectURL", "locate", "writing", "reading", "staging_folder", "one_process"]

from .location import ObjectURL, locate
from .staging import one_process, reading, staging_folder, writing
