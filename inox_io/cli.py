r"""The ``inox-io`` command: inspect, verify and convert checkpoints; list training steps.

.. code-block:: text

    inox-io inspect PATH [--json]         what a checkpoint holds, ties included; what a
                                          step of a CheckpointManager directory holds;
                                          the steps of a CheckpointManager directory
    inox-io steps DIR [--json]            the complete steps of a CheckpointManager
                                          directory: time, metrics, items, sizes
    inox-io verify PATH                   checks every array (of every item of a step)
        [--allow-unchecked]               ... exit 0 even if there were none to check
    inox-io convert SRC DST [--overwrite] rewrites a checkpoint in another format
        [--format NAME]                   ... a layout among DST's (orbax, for a directory)
        [--names torch [--keep NAME]]     ... under PyTorch state-dict names

A thin layer over :func:`inox_io.inspect`, :func:`inox_io.verify`,
:func:`inox_io.convert` and a read-only :class:`inox_io.CheckpointManager`. JAX is
imported by the commands only, so that ``--help`` answers at once. Exit status: 0 on
success, 1 for a damaged, unreadable or mismatched checkpoint (or a destination that
exists, or, for ``verify``, a checkpoint without any checksum, unless
``--allow-unchecked``), 2 for a missing file, an unknown format or a usage error, 130
when interrupted (Ctrl-C), 141 when the reader of standard output left early
(``inox-io inspect ... | head``). Long operations draw a progress bar on standard error,
with rate and time left, when it is a terminal.

Example:
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + '/tiny.safetensors'
    >>> p = nn.Parameter(jnp.ones(3))
    >>> tree = nn.Scope(a=nn.Reference('p', p), b=nn.Reference('p', p), act='relu')
    >>> _ = inox_io.save(path, tree, metadata={'step': '10'})
    >>> main(['inspect', path])
    /...tiny.safetensors: inox_io format v1 (safetensors)
    written by inox_io ..., inox ..., jax ..., numpy ..., python ...
    <BLANKLINE>
    arrays
      .a.value.value  float32[3]  12 B
    <BLANKLINE>
    ties (explicit sharing)
      scope <root>
        'p'  .a  aliases .b
    <BLANKLINE>
    implicit sharing: none
    <BLANKLINE>
    static hyper-parameters
      .act = 'relu'
    <BLANKLINE>
    metadata
      step = '10'
    <BLANKLINE>
    total: 1 array, 12 B stored, 12 B saved by sharing (1 aliased position)
    0
    >>> main(['verify', path])
    OK: 1 array, 12 B, every checksum matches
    0
"""

from __future__ import annotations

__all__ = ["main", "human_size", "duration", "ProgressBar"]

import argparse
import datetime
import json
import os
import sys
import time

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence, TextIO, Tuple

from . import keypath
from .errors import CheckpointError
from .storage.location import ObjectURL, locate, parent_of
from .version import __version__

if TYPE_CHECKING:  # the commands import these, and with them JAX
    from .manager import CheckpointManager
    from .manifest import ArrayInfo, Manifest

# Exit statuses; the last two as shells report a process ended by SIGINT or SIGPIPE.
OK, PROBLEM, USAGE, INTERRUPTED, CLOSED = 0, 1, 2, 130, 141


def human_size(n: int) -> str:
    r"""Formats a number of bytes with binary units.

    Example:
        >>> human_size(256), human_size(33024), human_size(3 * 2**30)
        ('256 B', '32.2 KiB', '3.0 GiB')
    """

    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def duration(seconds: float) -> str:
    r"""Formats a duration as ``m:ss``, or ``h:mm:ss`` from an hour on.

    Example:
        >>> duration(6.2), duration(75), duration(3 * 3600 + 5)
        ('0:06', '1:15', '3:00:05')
    """

    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class ProgressBar:
    r"""A one-line progress bar, redrawn in place, for :py:`progress(stage, done, total)`
    callbacks, with the stage's rate so far and the time left at that rate.

    Redraws are throttled (a checkpoint may hold many small arrays, and a terminal is
    slow), except the first and the last of a stage.

    Example:
        >>> import io
        >>> stream, ticks = io.StringIO(), iter([0.0, 2.0])
        >>> bar = ProgressBar(stream, width=10, clock=lambda: next(ticks))
        >>> bar('write', 0, 4096)
        >>> bar('write', 1024, 4096)
        >>> stream.getvalue().split('\r')[-1]
        'writing [##........] 1.0 KiB / 4.0 KiB, 512 B/s, 0:06 left'
        >>> bar.close()  # erases the line
    """

    LABELS = {"verify": "verifying", "write": "writing"}

    def __init__(
        self, stream: TextIO, *, width: int = 30, interval: float = 0.1, clock: Callable[[], float] = time.monotonic
    ):
        self.stream, self.width, self.interval, self.clock = stream, width, interval, clock
        self.stage, self.started, self.last, self.drawn, self.line = "", 0.0, 0.0, 0, ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self.stage:
            self.stage, self.started = stage, now
        elif done < total and now - self.last < self.interval:
            return
        self.last = now
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.LABELS.get(stage, stage)} [{bar}] {human_size(done)} / {human_size(total)}"
        elapsed = now - self.started
        if 0 < done < total and elapsed > 0:
            rate = done / elapsed
            line += f", {human_size(int(rate))}/s, {duration((total - done) / rate)} left"
        if line == self.line and self.drawn:
            return  # e.g. the end of a stage, reported by the writer and by its caller
        # Pad with spaces: a shorter line must cover the previous one.
        self.stream.write("\r" + line.ljust(self.drawn))
        self.stream.flush()
        self.drawn, self.line = len(line), line

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
            self.drawn, self.line = 0, ""


def progress_bar() -> ProgressBar | None:
    r"""A progress bar on standard error if it is a terminal: never in pipes or logs."""

    return ProgressBar(sys.stderr) if sys.stderr.isatty() else None


class OutputClosed(Exception):
    r"""The reader of standard output left (``inox-io ... | head``)."""


def emit(lines: Sequence[str] | str) -> None:
    r"""Prints a report on standard output, flushed now, so that a reader that left is
    noticed here (:class:`OutputClosed`) rather than by Python at exit."""

    try:
        print(lines if isinstance(lines, str) else "\n".join(lines), flush=True)
    except BrokenPipeError:
        raise OutputClosed from None


def silence_stdout() -> None:
    r"""Points standard output at the null device, so that what Python still holds for
    it is dropped at exit instead of failing a second time."""

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a test's capture)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def split_key(key: str) -> List[str]:
    r"""Splits a key path into its segments; a key it cannot parse is one segment.

    Example:
        >>> split_key(".l1.value['w'][0]")
        ['.l1', '.value', "['w']", '[0]']
        >>> split_key('encoder.layer.0.weight')
        ['encoder', '.layer', '.0', '.weight']
    """

    try:
        return [segment.text for segment in keypath.split(key)] or [key]
    except ValueError:
        return [key]


class _Node:
    def __init__(self) -> None:
        self.children: Dict[str, _Node] = {}
        self.info: ArrayInfo | None = None


def key_tree(arrays: Dict[str, ArrayInfo]) -> List[Tuple[int, str, ArrayInfo | None]]:
    r"""The stored keys as a tree: ``(depth, label, info)`` rows, chains of single
    children merged into one label (``.value`` hops would otherwise double the depth).

    Example:
        >>> infos = {k: inox_io.ArrayInfo('float32', (2,), 8) for k in ('.a.value.x', '.a.value.y', '.b')}
        >>> [(depth, label) for depth, label, _ in key_tree(infos)]
        [(0, '.a.value'), (1, '.x'), (1, '.y'), (0, '.b')]
    """

    root = _Node()
    for key, info in arrays.items():
        node = root
        for segment in split_key(key):
            node = node.children.setdefault(segment, _Node())
        node.info = info

    rows: List[Tuple[int, str, ArrayInfo | None]] = []

    def walk(node: _Node, depth: int) -> None:
        for label, child in node.children.items():
            while child.info is None and len(child.children) == 1:
                (more, child), = child.children.items()
                label += more
            rows.append((depth, label, child.info))
            walk(child, depth + 1)

    walk(root, 0)
    return rows


def describe(info: ArrayInfo) -> str:
    r"""Dtype and shape, as in ``float32[64, 64]``."""

    text = f"{info.dtype}{list(info.shape)}"
    return f"{text} ({info.key_impl})" if info.key_impl else text


def table(rows: Sequence[Sequence[str]], indent: str = "  ", right: Sequence[int] = (), sep: str = "  ") -> List[str]:
    r"""Aligns columns, separated by :py:`sep`; the columns in :py:`right` are
    right-aligned.

    Example:
        >>> print("\n".join(table([('a', '= 1'), ('abc', '= 22')], sep=' ')))
          a   = 1
          abc = 22
    """

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append((indent + sep.join(cells)).rstrip())
    return lines


def render(path: Path, manifest: Manifest) -> List[str]:
    r"""The report of :command:`inox-io inspect` on a checkpoint."""

    from .formats import format_for

    name = format_for(path).name
    if "inox_io" in manifest.libraries:
        lines = [f"{path}: inox_io format v{manifest.version} ({name})"]
    else:
        lines = [f"{path}: {name}, not written by inox_io"]
    if manifest.libraries:
        lines.append("written by " + ", ".join(f"{k} {v}" for k, v in manifest.libraries.items()))
    else:
        lines.append(f"{manifest.no_checksums or 'written by another tool'}: arrays described from the file's header")

    lines += ["", "arrays"]
    rows = [
        ("  " * depth + label, describe(info) if info else "", human_size(info.nbytes) if info else "")
        for depth, label, info in key_tree(manifest.arrays)
    ]
    lines += table(rows, right=[2]) if rows else ["  none"]
    unchecked = sum(info.crc32 is None for info in manifest.arrays.values())
    if unchecked:
        lines.append(f"  ({plural(unchecked, 'array')} without checksum)")

    lines.append("")
    alias_map = bool(manifest.aliases) and not manifest.libraries  # another tool's (torch's save_model)
    if manifest.ties or manifest.named_ties:
        # A file saved with names stores its arrays under them: its ties are the tree's
        # as declared, for the record, and its shared names say which arrays are one.
        lines.append("ties (explicit sharing)" if manifest.ties else "ties (explicit sharing, as declared in the tree saved)")
        scopes: Dict[str, list] = {}
        for tie in manifest.ties or manifest.named_ties:
            scopes.setdefault(tie.scope, []).append(tie)
        for scope, ties in scopes.items():
            lines.append(f"  scope {scope or '<root>'}")
            rows = [(repr(t.tag), t.path, "aliases " + ", ".join(t.aliases)) for t in ties]
            lines += table(rows, indent="    ")
    elif alias_map:
        lines.append("ties (the file's alias map: one stored array under several names)")
        lines += table([(alias, "= " + key) for alias, key in manifest.aliases.items()], sep=" ")
    else:
        lines.append("ties: none")

    lines.append("")
    if manifest.aliases and manifest.named_ties:
        lines.append("shared names (one stored array under several names)")
        lines += table([(alias, "= " + key) for alias, key in manifest.aliases.items()], sep=" ")
    elif manifest.aliases and not alias_map:
        lines.append("implicit sharing (same array object, no Reference)")
        lines += table([(alias, "= " + key) for alias, key in manifest.aliases.items()], sep=" ")
    else:
        lines.append("implicit sharing: none")

    for title, entries in (("static hyper-parameters", manifest.statics), ("metadata", manifest.metadata)):
        lines.append("")
        if entries:
            lines.append(title)
            lines += table([(k, f"= {v!r}") for k, v in entries.items()], sep=" ")
        else:
            lines.append(f"{title}: none")

    positions = manifest.positions()
    aliased = sum(position != key for position, key in positions.items())
    lines += [
        "",
        f"total: {plural(len(manifest.arrays), 'array')}, {human_size(manifest.nbytes)} stored, "
        f"{human_size(manifest.saved_bytes())} saved by sharing ({plural(aliased, 'aliased position')})",
    ]
    return lines


# ---------------------------------------------------------------------------------------
# CheckpointManager directories


def step_of(path: Path | ObjectURL) -> int | None:
    r"""The step, if :py:`path` is a complete step of a CheckpointManager directory."""

    from .manager.stores import steps_at

    return steps_at(parent_of(path)).step_at(path)


def is_manager_directory(path: Path | ObjectURL) -> bool:
    r"""Whether :py:`path` is a CheckpointManager directory."""

    from .manager.stores import steps_at

    return steps_at(path).is_manager_directory()


def step_manager(path: Path | ObjectURL) -> CheckpointManager:
    r"""A read-only manager of the directory holding the step :py:`path`."""

    from .manager import CheckpointManager

    return CheckpointManager(parent_of(path), read_only=True)


def step_record(manager: CheckpointManager, step: int) -> Dict[str, Any]:
    r"""A step's metadata, with the bytes stored of the step and of each file item.

    Raises:
        FileNotFoundError: if the step is no longer complete (deleted meanwhile).
    """

    from .manager.stores import steps_at

    metadata = manager.metadata(step)
    size = steps_at(manager.directory).sizes(step)
    for entry in metadata["items"].values():
        if "file" in entry:
            entry["bytes"] = size(f"{step}/{entry['file']}")
    return {**metadata, "bytes": size(str(step))}


def item_manifest(step: Path | ObjectURL, name: str, file: str) -> Manifest:
    r"""The manifest of a step's item (from a bucket, its files only are fetched)."""

    from .api import inspect
    from .storage import reading

    with reading(step, part=name) as local:
        return inspect(local / file)


def step_records(manager: CheckpointManager) -> List[Dict[str, Any]]:
    r"""The records of the complete steps, leaving out those deleted while listed (by
    a writer's retention, say)."""

    records = []
    for step in manager.all_steps():
        try:
            records.append(step_record(manager, step))
        except FileNotFoundError:
            continue
    return records


def saved_at(seconds: Any) -> str:
    r"""A step's time (Unix seconds) as local ISO 8601 time, to the second."""

    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "unknown"
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def metrics_text(metrics: Dict[str, Any] | None) -> str:
    r"""Metrics on one line.

    Example:
        >>> metrics_text({'loss': 1 / 3, 'epoch': 2, 'tag': 'best'}), metrics_text(None)
        ('loss=0.333333, epoch=2, tag="best"', '-')
    """

    if not metrics:
        return "-"
    return ", ".join(f"{k}={v:.6g}" if type(v) is float else f"{k}={json.dumps(v)}" for k, v in metrics.items())


def json_text(value: Any, limit: int = 60) -> str:
    r"""A JSON value on one line, cut at :py:`limit` characters.

    Example:
        >>> json_text({'next_batch': 192}), json_text(list(range(40)), limit=20)
        ('{"next_batch": 192}', '[0, 1, 2, 3, 4, 5...')
    """

    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_steps(directory: Path, records: List[Dict[str, Any]]) -> List[str]:
    r"""The report of :command:`inox-io steps`."""

    if not records:
        return [f"{directory}: a CheckpointManager directory, no complete step"]
    lines = [
        f"{directory}: a CheckpointManager directory, {plural(len(records), 'complete step')} "
        f"(latest {records[-1]['step']})",
        "",
    ]
    rows = [("step", "saved", "metrics", "items", "size")] + [
        (str(r["step"]), saved_at(r.get("time")), metrics_text(r["metrics"]), ", ".join(r["items"]), human_size(r["bytes"]))
        for r in records
    ]
    return lines + table(rows, right=[0, 4]) + ["", f"inox-io inspect {directory / str(records[-1]['step'])} describes a step"]


def render_step(path: Path, record: Dict[str, Any]) -> List[str]:
    r"""The report of :command:`inox-io inspect` on a step: its items, then each file
    item's report."""

    parent = parent_of(path)
    lines = [
        f"{path}: step {record['step']} of the CheckpointManager directory {parent}, "
        f"saved {saved_at(record.get('time'))}",
        f"metrics: {metrics_text(record['metrics'])}",
        f"size: {human_size(record['bytes'])}",
        "",
        "items",
    ]
    rows = []
    for name, entry in record["items"].items():
        if "file" in entry:
            rows.append((name, entry["format"], entry["file"], human_size(entry["bytes"])))
        else:
            rows.append((name, "json", json_text(entry["json"]), ""))
    lines += table(rows, right=[3]) if rows else ["  none"]
    for name, entry in record["items"].items():
        if "file" in entry:
            lines += [""] + render(path / entry["file"], item_manifest(path, name, entry["file"]))
    return lines


def step_json(path: Path, record: Dict[str, Any]) -> Dict[str, Any]:
    r"""A step's record, each file item with its manifest, for ``inspect --json``."""

    for name, entry in record["items"].items():
        if "file" in entry:
            entry["manifest"] = json.loads(item_manifest(path, name, entry["file"]).to_json())
    return record


def steps_json(directory: Path, records: List[Dict[str, Any]]) -> str:
    return json.dumps({"directory": str(directory), "steps": records})


def refuse_manager_path(path: Path, what: str, instead: str) -> None:
    r"""Refuses a CheckpointManager directory or step where a checkpoint is expected,
    saying what to give :py:`instead` of a directory."""

    step = step_of(path)
    if step is not None:
        items = [str(path / e["file"]) for e in step_manager(path).metadata(step)["items"].values() if "file" in e]
        raise UsageError(
            f"{path} is a step of a CheckpointManager directory; {what} one of its items: " + (", ".join(items) or "none")
        )
    if is_manager_directory(path):
        raise UsageError(f"{path} is a CheckpointManager directory; {what} {instead} (inox-io steps {path} lists the steps)")


class UsageError(Exception):
    r"""A command given what it does not take: exit status 2."""


# ---------------------------------------------------------------------------------------
# Commands


def run_inspect(args: argparse.Namespace) -> int:
    from .api import inspect

    step = step_of(args.path)
    if step is not None:
        record = step_record(step_manager(args.path), step)
        emit(json.dumps(step_json(args.path, record)) if args.json else render_step(args.path, record))
    elif is_manager_directory(args.path):
        return run_steps(args)
    else:
        manifest = inspect(args.path)
        emit(manifest.to_json() if args.json else render(args.path, manifest))
    return OK


def run_steps(args: argparse.Namespace) -> int:
    from .manager import CheckpointManager
    from .manager.stores import steps_at

    path = args.path
    store = steps_at(path)
    if not store.exists():
        raise FileNotFoundError(f"{path}: no such directory")
    if step_of(path) is not None:
        raise UsageError(f"{path} is a step, not a CheckpointManager directory; inox-io steps {path.parent} lists its steps")
    if not store.is_manager_directory():
        if store.holds_checkpoint():
            raise UsageError(f"{path} is a checkpoint, not a CheckpointManager directory; inox-io inspect {path} describes it")
        raise CheckpointError(path, "not a CheckpointManager directory (no complete step, no writer's lock file)")
    records = step_records(CheckpointManager(path, read_only=True))
    emit(steps_json(path, records) if args.json else render_steps(path, records))
    return OK


def run_verify(args: argparse.Namespace) -> int:
    from .api import verify
    from .storage import reading

    step = step_of(args.path)
    if step is not None:
        items = step_manager(args.path).metadata(step)["items"].items()
        files = {name: entry["file"] for name, entry in items if "file" in entry}
        what = f"step {step}, {plural(len(files), 'array item')}: "
    else:
        refuse_manager_path(args.path, "verify", f"one of its steps: inox-io verify {args.path / 'STEP'}")
        files, what = {None: None}, ""
    bar = progress_bar()
    try:
        manifests = []
        for name, file in files.items():
            # A step's item: the step's folder (fetched, the item's files only, from a bucket).
            with reading(args.path, part=name) as local:
                manifests.append(verify(local if file is None else local / file, progress=bar))
    finally:
        if bar:
            bar.close()
    count = sum(len(m.arrays) for m in manifests)
    nbytes = sum(m.nbytes for m in manifests)
    unchecked = sum(info.crc32 is None for m in manifests for info in m.arrays.values())
    whys = sorted({m.no_checksums for m in manifests if m.no_checksums})
    why = f" ({'; '.join(whys)})" if whys else ""
    summary = f"OK: {what}{plural(count, 'array')}, {human_size(nbytes)}, "
    if not unchecked:
        summary += "every checksum matches"
    elif unchecked == count:
        # e.g. a file written by another tool: a success would say nothing
        print(f"{args.path}: no checksums{why}: nothing verified", file=sys.stderr)
        return OK if args.allow_unchecked else PROBLEM
    else:
        summary += f"{plural(unchecked, 'array')} without checksum{why} (not verified), the others match"
    emit(summary)
    return OK


def run_convert(args: argparse.Namespace) -> int:
    from .api import convert
    from .formats import format_for
    from .names import torch_names

    refuse_manager_path(args.src, "convert", "an item of one of its steps")
    bar = progress_bar()
    try:
        names = {"torch": torch_names}.get(args.names)
        manifest = convert(
            args.src, args.dst, overwrite=args.overwrite, progress=bar, names=names, keep=args.keep, format=args.format
        )
    except FileExistsError:
        print(f"inox-io: {args.dst} already exists; pass --overwrite to replace it", file=sys.stderr)
        return PROBLEM
    finally:
        if bar:
            bar.close()
    emit(
        f"converted {args.src} ({format_for(args.src).name}) to {args.dst} ({format_for(args.dst).name}): "
        f"{plural(len(manifest.arrays), 'array')}, {human_size(manifest.nbytes)}, "
        + (f"{plural(len(manifest.aliases), 'shared name')} dropped" if args.names else f"{plural(len(manifest.ties), 'tie')} kept")
    )
    return OK


def check_paths(args: argparse.Namespace) -> None:
    r"""Refuses unknown suffixes and formats before any work starts.

    Raises:
        UsageError: naming the path and the formats there are.
    """

    from .formats import format_for, format_of

    try:
        for name in args.paths:
            format_for(getattr(args, name))
        if getattr(args, "format", None) is not None:
            format_of(args.dst, args.format)
    except ValueError as e:
        raise UsageError(e) from None


def location(text: str) -> Path | ObjectURL:
    r"""A command's path or gs:// or s3:// URL (see :func:`inox_io.storage.locate`).

    Example:
        >>> location('s3://bucket/model.safetensors'), location('model.msgpack')
        (ObjectURL(scheme='s3', bucket='bucket', key='model.safetensors'), PosixPath('model.msgpack'))
    """

    try:
        return locate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="inox-io",
        description="Inspect, verify and convert inox_io checkpoints (.safetensors, .msgpack, "
        ".safetensors.index.json, directories); list the steps of CheckpointManager directories.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd = commands.add_parser(
        "inspect", help="show arrays, ties, statics, metadata and totals (a step: its items; a manager directory: its steps)"
    )
    cmd.add_argument("path", type=location, metavar="PATH")
    cmd.add_argument("--json", action="store_true", help="print the manifest JSON as stored (a step: its record, items' manifests inside)")
    cmd.set_defaults(run=run_inspect, paths=["path"])

    cmd = commands.add_parser("steps", help="list the complete steps of a CheckpointManager directory")
    cmd.add_argument("path", type=location, metavar="DIR")
    cmd.add_argument("--json", action="store_true", help="print the steps' records as JSON")
    cmd.set_defaults(run=run_steps, paths=[])

    cmd = commands.add_parser("verify", help="check every array against its checksum (a step: every item's)")
    cmd.add_argument("path", type=location, metavar="PATH")
    cmd.add_argument(
        "--allow-unchecked", action="store_true",
        help="exit 0 when the checkpoint has no checksums at all (e.g. written by another tool): nothing to verify is expected",
    )  # fmt: skip
    cmd.set_defaults(run=run_verify, paths=["path"])

    cmd = commands.add_parser("convert", help="rewrite a checkpoint in another format, ties kept")
    cmd.add_argument("src", type=location, metavar="SRC")
    cmd.add_argument("dst", type=location, metavar="DST")
    cmd.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    cmd.add_argument("--format", metavar="NAME", help="the layout, among those of DST's kind: for a directory, 'sharded' (the default) or 'orbax'")
    cmd.add_argument("--names", choices=["torch"], help="store under PyTorch state-dict names (docs/interop.md)")
    cmd.add_argument("--keep", action="append", metavar="NAME", help="with --names: the name a shared array is stored under (repeatable)")
    cmd.set_defaults(run=run_convert, paths=["src", "dst"])
    return top


def main(argv: Sequence[str] | None = None) -> int:
    r"""Runs the command line and returns the exit status.

    Example:
        >>> main(['verify', 'no/such/file.safetensors'])
        2
    """

    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse's status
        return e.code if isinstance(e.code, int) else OK

    def fail(message: object, status: int) -> int:
        print(f"inox-io: {message}", file=sys.stderr)
        return status

    try:
        check_paths(args)
        return args.run(args)
    except OutputClosed:
        silence_stdout()
        return CLOSED
    except KeyboardInterrupt:
        return fail("interrupted", INTERRUPTED)
    except (UsageError, FileNotFoundError) as e:
        return fail(e, USAGE)
    except CheckpointError as e:
        return fail(e, PROBLEM)
    except (OSError, ValueError, TypeError) as e:  # e.g. a full disk, a format's size limit
        return fail(e, PROBLEM)


if __name__ == "__main__":
    raise SystemExit(main())
