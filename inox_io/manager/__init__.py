r"""A directory of numbered training checkpoints: atomic steps, asynchronous saves,
retention, and a lock against a second writer.

The parts: :mod:`.lock` (one writer per directory), :mod:`.metadata` (the file that
makes a step complete), :mod:`.retention` (which steps are kept), :mod:`.snapshot`
(what a save holds while it writes), the stores of steps with one set of methods
(:mod:`.disk_steps` for a directory, orbax's steps read too through
:mod:`.orbax_steps`; :mod:`.bucket_steps` for a bucket prefix), and :mod:`.manager`,
the orchestration.

Layout of a checkpoint directory:

.. code-block:: text

    <directory>/
        .inox_io-lock                 held (flock) by the one writing manager
        100/                          a complete step
            model.safetensors         one checkpoint per array item, ties kept
            opt_state.safetensors
            _CHECKPOINT.json          step, time, metrics, items; written last
        .inox_io-tmp-200.<pid>.<hex>/ a step being written, or left by a crash

A step is built under a temporary name (:data:`inox_io.atomic.TEMP_PREFIX`) and
renamed into place once every file in it is written and fsynced, so readers see a
step entirely or not at all. Deletion (retention) renames a step away before removing
its files, for the same reason. The temporaries of a crashed writer are removed when
the next writer opens the directory.

An *item* is one entry of the dictionary given to :meth:`CheckpointManager.save`:

* a tree holding arrays (a model, an optimizer state, a PRNG key) is saved as one
  checkpoint file (see :func:`inox_io.save`), and restored into the structure of a
  ``like`` tree, its non-array leaves (hyper-parameters) coming from ``like``;
* a plain JSON value (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``,
  ``None``; no arrays), such as a step counter or a data-loader position, is kept in
  ``_CHECKPOINT.json`` and restored as saved, without a ``like``.

Example:
    >>> import tempfile
    >>> model = nn.Linear(2, 3, key=jax.random.key(0))
    >>> with CheckpointManager(tempfile.mkdtemp(), max_to_keep=2) as manager:
    ...     for step in range(1, 5):
    ...         _ = manager.save(step, {'model': model, 'data': {'offset': 32 * step}})
    ...     manager.wait_until_finished()
    ...     manager.all_steps()
    ...     restored = manager.restore(like={'model': model})
    [3, 4]
    >>> restored['data'], type(restored['model']).__name__, restored['model'].weight.value.shape
    ({'offset': 128}, 'Linear', (2, 3))
"""

from __future__ import annotations

__all__ = ["CheckpointManager", "DirectoryLockedError", "Retention", "METADATA_FILE", "LOCK_FILE"]

from .lock import LOCK_FILE, DirectoryLockedError
from .manager import CheckpointManager
from .metadata import METADATA_FILE
from .retention import Retention
