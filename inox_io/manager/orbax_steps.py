r"""The steps of a directory that orbax's ``CheckpointManager`` wrote, as a read-only
:class:`~inox_io.CheckpointManager` lists and restores them: complete steps are the
numbered folders holding orbax's record of the step (``_CHECKPOINT_METADATA``), whose
items, time and metrics come from that record. Array items read as checkpoints of
:mod:`inox_io.formats.orbax_native`; JSON items as their values. A writing manager
refuses such a directory: another tool owns it.

Example:
    >>> import tempfile
    >>> import orbax.checkpoint as ocp
    >>> root = Path(tempfile.mkdtemp())
    >>> with ocp.CheckpointManager(root, item_names=('state', 'data')) as manager:
    ...     _ = manager.save(5, args=ocp.args.Composite(
    ...         state=ocp.args.StandardSave({'w': np.ones(2)}), data=ocp.args.JsonSave({'offset': 160})
    ...     ), metrics={'loss': 0.5})
    >>> is_step(root / '5'), step_metadata(root / '5', 5)['items']
    (True, {'data': {'json': {'offset': 160}}, 'state': {'file': 'state', 'format': 'orbax-native'}})
    >>> print(owner(root))
    an orbax CheckpointManager's directory (steps 5)
"""

from __future__ import annotations

__all__ = ["is_step", "step_metadata", "owner"]

from pathlib import Path
from typing import Any, Dict

from ..formats import format_for
from ..formats.orbax_native import ITEM, ROOT, STEP, kind_of, read_step, steps_of


def is_step(path: Path) -> bool:
    r"""Whether :py:`path` is a complete step that orbax wrote."""

    return kind_of(path) == STEP


def step_metadata(path: Path, step: int) -> Dict[str, Any]:
    r"""The metadata of an orbax step, as :meth:`CheckpointManager.metadata` gives it:
    ``step``, ``time``, ``metrics`` and ``items``. Items that inox_io cannot read
    (protos, custom handlers) are left out.

    Raises:
        CheckpointError: if orbax cannot read its record of the step, or a JSON item.
    """

    recorded = read_step(path)
    items = {
        name: {"file": name, "format": format_for(path / name).name} if what == ITEM else {"json": recorded.json(name)}
        for name, what in recorded.items.items()
    }
    return {"step": step, "time": recorded.time, "metrics": recorded.metrics, "items": items}


def owner(directory: Path) -> str | None:
    r"""What orbax wrote at :py:`directory`, if anything: a directory a writing manager
    must not write into (not even its lock file)."""

    kind = kind_of(directory)
    if kind == ROOT:
        return f"an orbax CheckpointManager's directory (steps {', '.join(map(str, steps_of(directory)))})"
    return None if kind is None else f"written by orbax (a {kind})"
