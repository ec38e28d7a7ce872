r"""The metadata file of a step, ``_CHECKPOINT.json``: written last, it is what makes
a step directory a complete step.

.. code-block:: text

    {"format": "inox_io.checkpoint", "version": 1, "step": 100, "time": 1733300000.0,
     "metrics": {"loss": 0.25} | null,
     "items": {"model": {"file": "model.safetensors", "format": "safetensors"},
               "data": {"json": {"offset": 3200}}}}

Example:
    >>> data = step_metadata(3, {'data': {'json': [1, 2]}}, {'loss': 0.5})
    >>> parse(json.dumps(data).encode(), Path('3') / METADATA_FILE, 3)['items']
    {'data': {'json': [1, 2]}}
"""

from __future__ import annotations

__all__ = ["METADATA_FILE", "ITEM_NAME", "STEP_NAME", "scalar_metrics", "step_metadata", "parse"]

import json
import math
import numpy as np
import re
import time

from pathlib import Path
from typing import Any, Dict, Mapping

from inox.tree import is_array

from ..errors import CheckpointError
from ..manifest import is_json

METADATA_FILE = "_CHECKPOINT.json"  #: In each step directory, written last.

#: What an item may be called: a file name in any file system.
ITEM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
#: The name of a step's folder (or object): its number, without leading zeros.
STEP_NAME = re.compile(r"(0|[1-9][0-9]*)\Z")

_KIND = "inox_io.checkpoint"
_VERSION = 1


def scalar_metrics(metrics: Mapping[str, Any] | None) -> Dict[str, Any] | None:
    r"""Metrics as JSON values; scalar arrays (a loss fresh from jit) become numbers.

    Example:
        >>> scalar_metrics({'loss': np.float32(0.5)})
        {'loss': 0.5}
    """

    if metrics is None:
        return None
    out = {}
    for key, value in metrics.items():
        if is_array(value) and math.prod(np.shape(value)) == 1:
            value = np.asarray(value).item()
        if type(key) is not str or not is_json(value):
            raise TypeError(f"metric {key!r}: str keys and JSON (or scalar array) values expected, found {value!r}")
        out[key] = value
    return out


def step_metadata(step: int, items: Mapping[str, Any], metrics: Dict[str, Any] | None) -> Dict[str, Any]:
    r"""The metadata of a step saved now."""

    return {
        "format": _KIND,
        "version": _VERSION,
        "step": step,
        "time": time.time(),
        "metrics": metrics,
        "items": dict(items),
    }


def parse(text: bytes, path: Path, step: int) -> Dict[str, Any]:
    r"""Parses and checks the metadata of :py:`step`, read from :py:`path`.

    Raises:
        CheckpointError: naming :py:`path`, on anything malformed.
    """

    def fail(message: str):
        raise CheckpointError(path, message)

    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        fail(f"not valid JSON ({e})")
    if not isinstance(data, dict) or data.get("format") != _KIND:
        fail(f"format {_KIND!r} expected")
    if data.get("version") != _VERSION:
        fail(f"unknown version {data.get('version')!r}; this library reads version {_VERSION}")
    if data.get("step") != step:
        fail(f"says step {data.get('step')!r}, in the directory of step {step}")
    if data.get("metrics") is not None and not isinstance(data["metrics"], dict):
        fail("metrics: an object or null expected")
    items = data.get("items")
    if not isinstance(items, dict):
        fail("items: an object expected")
    for name, entry in items.items():
        valid = isinstance(entry, dict) and (
            list(entry) == ["json"]
            or (
                sorted(entry) == ["file", "format"]
                and isinstance(entry["file"], str)
                and entry["file"] == Path(entry["file"]).name  # no escaping the step directory
                and entry["file"] not in ("", ".", "..")
            )
        )
        if not ITEM_NAME.match(name) or not valid:
            fail(f"items: malformed entry {name!r}: {entry!r}")
    return data
