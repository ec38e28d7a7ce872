r"""Directories written by orbax itself, read (never written) through orbax's own API:
``ocp.StandardCheckpointer`` and ``ocp.PyTreeCheckpointer`` checkpoints, and the steps
of an ``ocp.CheckpointManager`` and the items inside them, with or without OCDBT, in
zarr v2 or v3.

.. code-block:: text

    <checkpoint>/                 a checkpoint (or an item of a step)
        _METADATA                 orbax's tree: key paths, array shapes and dtypes
        _CHECKPOINT_METADATA      the writer, timestamps, metrics (a Checkpointer's)
        manifest.ocdbt, d/, ...   the arrays (OCDBT), or one zarr folder per array
    <step>/                       a step of an orbax CheckpointManager
        _CHECKPOINT_METADATA      its items and their handlers, metrics, time
        default/ | <item>/        its items: checkpoints as above, or JSON

The reader presents such a directory as a checkpoint of inox_io: a :class:`Manifest`
whose arrays are the leaves of the orbax tree, keyed by their key paths as inox_io's
own save of the same tree keys them (``['params']['w']``, ``['layers'][0]``), whose
statics are its numbers and strings, without ties (a ``like`` brings them) and without
checksums (orbax keeps none). A step reads as its items' trees, ``{item: tree}``, or
as its only item's tree when that is orbax's single item, ``default`` (as orbax's
``CheckpointManager.restore`` returns them); its JSON items as statics.

Orbax does not record whether a key was a dictionary key or an attribute: a module
saved by orbax reads as dictionaries. :func:`orbax_names` matches a module's key paths
to such keys as orbax does, by the names of their keys
(``inox_io.load(path, model, names=orbax_names)``).

Example:
    >>> import os, tempfile
    >>> import orbax.checkpoint as ocp
    >>> path = tempfile.mkdtemp() + '/ckpt'
    >>> with ocp.StandardCheckpointer() as checkpointer:
    ...     checkpointer.save(path, {'params': {'w': jnp.arange(3.0)}, 'step': 5})
    >>> manifest = inox_io.inspect(path)
    >>> manifest.arrays, manifest.statics
    ({"['params']['w']": ArrayInfo(dtype='float32', shape=(3,), nbytes=12, crc32=None, key_impl=None)}, {"['step']": 5})
    >>> manifest.libraries
    {'orbax': 'StandardCheckpointHandler'}
    >>> inox_io.load(path, {'params': {'w': jnp.zeros(3)}, 'step': 0}, statics='file')
    {'params': {'w': Array([0., 1., 2.], dtype=float32)}, 'step': 5}
"""

from __future__ import annotations

__all__ = ["OrbaxNativeFormat", "OrbaxNativeReader", "OrbaxStep", "WRITER", "kind_of", "orbax_names", "read_step", "steps_of"]

import contextlib
import dataclasses
import jax
import jax.tree_util as jtu
import json
import logging
import math
import numpy as np
import os

from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Tuple

from .. import keypath
from ..atomic import open_regular
from ..dtypes import dtype_name
from ..errors import CheckpointError
from ..manifest import ArrayInfo, Manifest, shape_problem
from .directory_commit import MANIFEST
from .interface import Format
from .orbax_dir import OrbaxReader, reason

#: The entry of :attr:`Manifest.libraries` naming the writer of such a directory.
WRITER = "orbax"

#: Why such a checkpoint has no checksums, and what verifying it does instead.
NO_CHECKSUMS = "written by orbax, which records none; verify reads every array through orbax"

# The kinds of directories orbax writes (see kind_of).
ITEM, STEP, ROOT, UNFINISHED = "checkpoint", "step", "manager", "unfinished"

#: Orbax's files: the tree of a checkpoint, the record of a step or a Checkpointer's save.
TREE_FILE, STEP_FILE = "_METADATA", "_CHECKPOINT_METADATA"
#: What orbax writes where arrays lie: OCDBT's manifest, zarr v2's and v3's array files.
ARRAY_FILES = ("manifest.ocdbt", ".zarray", "zarr.json")
#: In the name of a directory that orbax still writes (renamed once finished).
TEMPORARY = ".orbax-checkpoint-tmp"
#: The item a CheckpointManager saves a single unnamed item as.
DEFAULT_ITEM = "default"

#: The item in which orbax's CheckpointManager keeps the metrics of a step.
METRICS_ITEM = "metrics"

#: The file by which orbax marks a finished save on file systems without atomic renames.
COMMIT_FILE = "commit_success.txt"
#: The most entries of a directory looked at to recognize it (zarr folders, steps).
MAX_LOOKS = 1024


def kind_of(path: Path) -> str | None:
    r"""What orbax wrote at :py:`path`: ``"checkpoint"`` (a tree of arrays: a
    Checkpointer's save, or an item of a step), ``"step"`` (a CheckpointManager's
    step), ``"manager"`` (a CheckpointManager's directory of steps), ``"unfinished"``
    (orbax's temporary directory of a save in progress or killed), or :py:`None`
    (nothing orbax wrote, or an inox_io directory: it has a manifest).

    Example:
        >>> import tempfile
        >>> import orbax.checkpoint as ocp
        >>> root = Path(tempfile.mkdtemp())
        >>> with ocp.CheckpointManager(root) as manager:
        ...     _ = manager.save(3, args=ocp.args.StandardSave({'w': np.ones(2)}))
        >>> kind_of(root), kind_of(root / '3'), kind_of(root / '3' / 'default'), kind_of(root.parent)
        ('manager', 'step', 'checkpoint', None)
    """

    if not path.is_dir() or os.path.lexists(path / MANIFEST):
        return None
    if TEMPORARY in path.name:
        return UNFINISHED
    if (path / TREE_FILE).is_file() or (path / ARRAY_FILES[0]).is_file() or _has_zarr_folder(path):
        return ITEM
    if (path / STEP_FILE).is_file():
        return STEP
    return ROOT if steps_of(path, limit=1) else None


def _has_zarr_folder(path: Path) -> bool:
    r"""Whether a folder of :py:`path` is a zarr array (a checkpoint without OCDBT)."""

    try:
        with os.scandir(path) as entries:
            for _, entry in zip(range(MAX_LOOKS), entries):
                if entry.is_dir(follow_symlinks=False) and any(os.path.isfile(os.path.join(entry.path, f)) for f in ARRAY_FILES[1:]):
                    return True
    except OSError:
        pass
    return False


def steps_of(directory: Path, *, limit: int | None = None) -> List[int]:
    r"""The finished steps of an orbax CheckpointManager's directory (folders named by
    their number, holding orbax's record of a step), in increasing order; at most
    :py:`limit` of them (unsorted then)."""

    steps: List[int] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.isdecimal() and entry.name == str(int(entry.name)) and os.path.isfile(os.path.join(entry.path, STEP_FILE)):
                    steps.append(int(entry.name))
                    if limit is not None and len(steps) >= limit:
                        break
    except OSError:
        return []
    return sorted(steps)


def handler_name(handler: Any) -> str:
    r"""The class name of an orbax handler, as orbax records it (its module path).

    Example:
        >>> handler_name('orbax.checkpoint._src.handlers.json_checkpoint_handler.JsonCheckpointHandler')
        'JsonCheckpointHandler'
    """

    return str(handler).rsplit(".", 1)[-1]


def orbax_names(path: str) -> str:
    r"""The name of a key path as orbax matches arrays: its keys joined by dots, whether
    they are attributes, dictionary keys or indices (orbax records no difference). A
    names function (:func:`inox_io.load`'s :py:`names`) for loading a checkpoint that
    orbax wrote from a module into that module, the ties coming from the ``like``.

    Example:
        >>> orbax_names('.l1.value.weight.value'), orbax_names("['l1']['value']['weight']['value']")
        ('l1.value.weight.value', 'l1.value.weight.value')
        >>> orbax_names("['layers'][0]['w']")
        'layers.0.w'
    """

    return ".".join(segment.key for segment in keypath.split(path))


@dataclasses.dataclass
class OrbaxStep:
    r"""A step of an orbax CheckpointManager, as orbax records it."""

    path: Path
    #: Its items: name -> ``"checkpoint"`` (a tree of arrays) or ``"json"``. Items of
    #: other handlers (protos, custom ones) are left out: inox_io cannot read them.
    items: Dict[str, str]
    #: Each item's handler, by name.
    handlers: Dict[str, str]
    time: float | None
    metrics: Dict[str, Any] | None
    custom_metadata: Dict[str, Any]

    def json(self, item: str) -> Any:
        r"""The value of a JSON item, read by orbax's JSON handler."""

        import orbax.checkpoint as ocp

        folder = self.path / item
        check_regular(folder, self.path)
        # Its one file is named by the handler that wrote it: "metadata" by default,
        # "metrics" for orbax's metrics.
        names = sorted(f.name for f in folder.iterdir() if f.name != COMMIT_FILE) if folder.is_dir() else []
        try:
            handler = ocp.JsonCheckpointHandler(filename=names[0] if len(names) == 1 else None)
            return ocp.Checkpointer(handler).restore(folder.absolute())
        except Exception as e:
            raise CheckpointError(folder, f"orbax cannot read this JSON item ({reason(e)})") from None


def read_step(path: Path) -> OrbaxStep:
    r"""Reads orbax's record of a step (its ``_CHECKPOINT_METADATA``) through orbax.

    Raises:
        CheckpointError: if orbax cannot read it.
    """

    import orbax.checkpoint as ocp

    check_regular(path / STEP_FILE, path)
    try:
        with warnings_of_absl_silenced():  # it warns of each item it was not asked to restore
            recorded = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).metadata(path.absolute())
    except Exception as e:
        raise CheckpointError(path, f"orbax cannot read its record of the step, {STEP_FILE} ({reason(e)})") from None
    handlers = recorded.item_handlers if isinstance(recorded.item_handlers, Mapping) else {}
    if not handlers:  # an older step, without its items' handlers: its item folders
        handlers = {p.name: "" for p in sorted(path.iterdir()) if kind_of(p) == ITEM}
    items = {}
    for name, handler in handlers.items():
        if handler_name(handler) == "JsonCheckpointHandler":
            items[name] = "json"
        elif kind_of(path / name) == ITEM:
            items[name] = ITEM
    commit = recorded.commit_timestamp_nsecs
    step = OrbaxStep(
        path=path,
        items=items,
        handlers={name: handler_name(h) for name, h in handlers.items()},
        time=None if commit is None else commit / 1e9,
        metrics=dict(recorded.metrics) if recorded.metrics else None,
        custom_metadata=dict(recorded.custom_metadata or {}),
    )
    # The metrics given to orbax's save (with a best_fn) are an item of orbax's own,
    # not the user's: they are the step's metrics.
    if items.get(METRICS_ITEM) == "json":
        del items[METRICS_ITEM]
        recorded_metrics = step.json(METRICS_ITEM)
        if step.metrics is None and isinstance(recorded_metrics, dict):
            step.metrics = recorded_metrics
    return step


@contextlib.contextmanager
def warnings_of_absl_silenced() -> Iterator[None]:
    r"""Raises the level of the ``absl`` logger, through which orbax logs, to errors
    while the block runs: orbax's warnings about what it was not asked to do are not
    the user's business."""

    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_regular(path: Path, checkpoint: Path) -> None:
    r"""Refuses a file (or any file in a folder) of :py:`checkpoint` that is not a
    regular file, before orbax opens it: a FIFO would block orbax forever."""

    files = [path] if not path.is_dir() else [Path(folder) / name for folder, _, names in os.walk(path) for name in names]
    for file in files:
        try:
            os.close(open_regular(file))
        except FileNotFoundError:
            continue  # orbax says what is missing
        except CheckpointError as e:
            raise CheckpointError(checkpoint, f"{os.path.relpath(e.path, checkpoint)}: {e.message}") from None


@dataclasses.dataclass(frozen=True)
class Leaf:
    r"""A leaf of an orbax tree: the checkpoint folder of its tree, its key path in
    that tree, and orbax's description of it."""

    folder: Path
    path: str
    metadata: Any


class OrbaxNativeFormat(Format):
    r"""Directories that orbax wrote (no inox_io manifest): read only."""

    name, suffix, description = "orbax-native", "", "directories written by orbax itself (read only)"

    def matches(self, path: Path) -> bool:
        return kind_of(path) is not None

    def write(
        self,
        path: Path,
        manifest: Manifest,
        arrays: Mapping[str, Any],
        *,
        overwrite: bool,
        extra: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        raise CheckpointError(
            path,
            "written by orbax: inox_io reads such directories but never writes into them; "
            "save to another path (a new directory, or a '.safetensors' file)",
        )

    def open(self, path: Path) -> OrbaxNativeReader:
        return OrbaxNativeReader(path)


class OrbaxNativeReader(OrbaxReader):
    r"""An open directory that orbax wrote: the reading of :class:`OrbaxReader` (onto
    the targets' shardings, each process its own shards; read again if replaced
    meanwhile), over orbax's own description of the tree instead of a manifest."""

    def open(self) -> None:
        r"""Describes the directory at the path from orbax's metadata, and notes which
        directory it is."""

        kind = kind_of(self.path)
        if kind in (None, UNFINISHED, ROOT):
            self.refuse(kind)
        self.status = os.stat(self.path)
        check_regular(self.path, self.path)  # before orbax opens any of it
        folders: Dict[str, Path] = {}  # each tree's folder, by the key path of the tree
        statics: Dict[str, Any] = {}
        if kind == STEP:
            step = read_step(self.path)
            metadata = step.custom_metadata
            single = list(step.items) == [DEFAULT_ITEM]  # read as orbax's restore returns it
            for name, what in step.items.items():
                prefix = "" if single else jtu.keystr((jtu.DictKey(name),))
                if what == ITEM:
                    folders[prefix] = self.path / name
                else:
                    statics.update(json_statics(prefix, step.json(name)))
            writer = f"CheckpointManager step {self.path.name} (items {', '.join(map(repr, step.items))})"
        else:
            folders[""] = self.path
            metadata, writer = self.recorded()

        self.trees = {folder: tree_of(folder) for folder in folders.values()}
        self.leaves: Dict[str, Leaf] = {}
        for prefix, folder in folders.items():
            for path, leaf in jtu.tree_leaves_with_path(self.trees[folder], is_leaf=is_described):
                if is_described(leaf):
                    self.leaves[prefix + jtu.keystr(path)] = Leaf(folder, jtu.keystr(path), leaf)
        arrays = {key: self.describe(key, leaf.metadata) for key, leaf in self.leaves.items() if is_array(leaf.metadata)}
        statics.update(self.read_statics([key for key in self.leaves if key not in arrays]))
        self.manifest = Manifest(
            arrays,
            statics=dict(sorted(statics.items())),
            metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
            libraries={WRITER: writer},
            no_checksums=NO_CHECKSUMS,
        )

    def refuse(self, kind: str | None) -> None:
        r"""Raises the error of a path that is not (or no longer) a checkpoint orbax wrote."""

        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such checkpoint")
        if kind == UNFINISHED:
            raise CheckpointError(self.path, "a temporary directory of orbax: an unfinished (or interrupted) orbax save")
        if kind == ROOT:
            steps = steps_of(self.path)
            raise CheckpointError(
                self.path,
                f"the directory of an orbax CheckpointManager (steps {', '.join(map(str, steps))}), not a "
                f"checkpoint: open one step ({self.path / str(steps[-1])}), or list them with "
                "inox_io.CheckpointManager(directory, read_only=True)",
            )
        raise CheckpointError(self.path, f"no {MANIFEST}: not an inox_io checkpoint, or an unfinished save")

    def recorded(self) -> Tuple[Dict[str, Any], str]:
        r"""The custom metadata of a checkpoint's save and who wrote it, from orbax's
        record of it: its own (a Checkpointer's), or that of the step it is an item of."""

        import orbax.checkpoint as ocp

        if (self.path / STEP_FILE).is_file():
            try:
                recorded = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).metadata(self.path.absolute())
            except Exception as e:
                raise CheckpointError(self.path, f"orbax cannot read its record of the save, {STEP_FILE} ({reason(e)})") from None
            return dict(recorded.custom_metadata or {}), handler_name(recorded.item_handlers)
        parent = self.path.absolute().parent
        if kind_of(parent) == STEP:
            step = read_step(parent)
            handler = step.handlers.get(self.path.name)
            item = f"CheckpointManager step {parent.name}, item {self.path.name!r}"
            return step.custom_metadata, item + (f" ({handler})" if handler else "")
        return {}, "PyTree checkpoint"

    def describe(self, key: str, leaf: Any) -> ArrayInfo:
        r"""An array as the manifest describes it, from orbax's description."""

        try:
            name = dtype_name(np.dtype(leaf.dtype))
        except TypeError as e:
            raise CheckpointError(self.path, f"orbax's metadata gives the dtype {leaf.dtype}: {e}", key=key) from None
        info = ArrayInfo(name, tuple(int(d) for d in leaf.shape), 0)
        problem = shape_problem(info.shape, info.storage_dtype.itemsize)
        if problem:
            raise CheckpointError(self.path, f"orbax's metadata gives a {problem}", key=key)
        info.nbytes = math.prod(info.shape) * info.storage_dtype.itemsize
        return info

    def read_statics(self, keys: List[str]) -> Dict[str, Any]:
        r"""The numbers and strings of the trees, read through orbax, as JSON values;
        those that JSON cannot hold (NaN, infinities) are left out."""

        import orbax.checkpoint as ocp
        from orbax.checkpoint import metadata as described

        if not keys:
            return {}
        strings = {key for key in keys if isinstance(self.leaves[key].metadata, described.StringMetadata)}
        items = {key: "" if key in strings else 0 for key in keys}
        args = {key: ocp.RestoreArgs(restore_type=str) if key in strings else ocp.RestoreArgs() for key in keys}
        out = {}
        for key, value in self.restore_through_orbax(items, args).items():
            if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
                value = value.item()
            if value is not None and is_json_scalar(value):
                out[key] = value
        return out

    @property
    def arrays(self) -> Path:
        return self.path.absolute()

    def open_entries(self, keys: Iterable[str]) -> None:
        pass  # orbax's descriptions were read when the directory was opened

    def entry(self, key: str) -> Any:
        r"""Orbax's description (shape, dtype) of the array of :py:`key`, where
        :meth:`OrbaxReader.check` looks it up."""

        return self.leaves[key].metadata

    def restore(self, items: Mapping[str, jax.ShapeDtypeStruct]) -> Dict[str, Any]:
        r"""Restores the arrays of :py:`items` (stored keys) only, each onto the sharding
        of its item (a host array without one), through orbax: a folder orbax wrote may
        hold what only orbax reads (its own layouts and handlers)."""

        import orbax.checkpoint as ocp

        args = {
            key: ocp.RestoreArgs(restore_type=np.ndarray)
            if item.sharding is None
            else ocp.ArrayRestoreArgs(sharding=item.sharding, global_shape=item.shape, dtype=item.dtype)
            for key, item in items.items()
        }
        return self.restore_through_orbax(items, args)

    def restore_through_orbax(self, items: Mapping[str, Any], args: Mapping[str, Any]) -> Dict[str, Any]:
        r"""Restores the leaves of :py:`items` (stored keys) only, with orbax's restore
        arguments :py:`args`, each tree's through orbax, the others' leaves left out
        (orbax's placeholders)."""

        import orbax.checkpoint as ocp

        by_folder: Dict[Path, Dict[str, str]] = {}  # folder -> path in its tree -> key
        for key in items:
            leaf = self.leaves[key]
            by_folder.setdefault(leaf.folder, {})[leaf.path] = key
        out = {}
        for folder, keys in by_folder.items():

            def chosen(values: Mapping[str, Any]) -> Any:
                pick = lambda path, _: values[keys[jtu.keystr(path)]] if jtu.keystr(path) in keys else ocp.PLACEHOLDER
                return jtu.tree_map_with_path(pick, self.trees[folder], is_leaf=is_described)

            try:
                restored = ocp.PyTreeCheckpointer().restore(
                    folder.absolute(), args=ocp.args.PyTreeRestore(item=chosen(items), restore_args=chosen(args))
                )
            except Exception as e:
                raise CheckpointError(self.path, f"orbax could not read it ({reason(e)})") from None
            for path, value in jtu.tree_leaves_with_path(restored, is_leaf=lambda x: x is ocp.PLACEHOLDER):
                if jtu.keystr(path) in keys:
                    out[keys[jtu.keystr(path)]] = value
        return out


def is_described(x: Any) -> bool:
    r"""Whether :py:`x` is orbax's description of a leaf it can read (an array, a
    number, a string)."""

    from orbax.checkpoint import metadata

    return isinstance(x, (metadata.ArrayMetadata, metadata.StringMetadata))


def is_array(x: Any) -> bool:
    r"""Whether orbax describes a leaf as an array (numbers are described as arrays too,
    of the subclass ``ScalarMetadata``)."""

    from orbax.checkpoint import metadata

    return isinstance(x, metadata.ArrayMetadata) and not isinstance(x, metadata.ScalarMetadata)


def tree_of(folder: Path) -> Any:
    r"""Orbax's description of the tree of a checkpoint folder (its ``_METADATA``)."""

    import orbax.checkpoint as ocp

    try:
        return ocp.PyTreeCheckpointHandler().metadata(folder.absolute()).tree
    except Exception as e:
        raise CheckpointError(folder, f"orbax cannot read the description of its tree, {TREE_FILE} ({reason(e)})") from None


def json_statics(prefix: str, value: Any) -> Dict[str, Any]:
    r"""The JSON scalars of a JSON item, by key path under :py:`prefix`.

    Example:
        >>> json_statics("['extra']", {'epoch': 2, 'files': ['a', 'b']})
        {"['extra']['epoch']": 2, "['extra']['files'][0]": 'a', "['extra']['files'][1]": 'b'}
    """

    leaves = jtu.tree_leaves_with_path(value, is_leaf=lambda x: x is None)
    return {prefix + jtu.keystr(path): leaf for path, leaf in leaves if is_json_scalar(leaf)}


def is_json_scalar(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, str)) or (isinstance(x, float) and math.isfinite(x))
