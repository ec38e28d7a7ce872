r"""The ``inox-io`` command: inspect, verify and convert checkpoints.

.. code-block:: text

    inox-io inspect PATH [--json]         what a checkpoint holds, ties included
    inox-io verify PATH                   checks every array against its checksum
        [--allow-unchecked]               ... exit 0 even if there were none to check
    inox-io convert SRC DST [--overwrite] rewrites a checkpoint in another format
        [--names torch [--keep NAME]]     ... under PyTorch state-dict names

A thin layer over :func:`inox_io.inspect`, :func:`inox_io.verify` and
:func:`inox_io.convert`. Exit status: 0 on success, 1 for a damaged, unreadable or
mismatched checkpoint (or a destination that exists, or, for ``verify``, a checkpoint
without any checksum, unless ``--allow-unchecked``), 2 for a missing file, an unknown
format or a usage error. Long operations draw a progress bar on standard error, when it
is a terminal.

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

__all__ = ["main", "human_size", "ProgressBar"]

import argparse
import sys
import time

from pathlib import Path
from typing import Dict, List, Sequence, TextIO, Tuple

from . import keypath
from .api import convert, inspect, verify
from .names import torch_names
from .errors import CheckpointError
from .version import __version__
from .formats import format_for
from .manifest import ArrayInfo, Manifest

# Exit statuses.
OK, PROBLEM, USAGE = 0, 1, 2


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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class ProgressBar:
    r"""A one-line progress bar, redrawn in place, for :py:`progress(stage, done, total)`
    callbacks.

    Redraws are throttled (a checkpoint may hold many small arrays, and a terminal is
    slow), except the first and the last of a stage.

    Example:
        >>> import io
        >>> stream = io.StringIO()
        >>> bar = ProgressBar(stream, width=10)
        >>> bar('verify', 512, 1024)
        >>> stream.getvalue()
        '\rverifying [#####.....] 512 B / 1.0 KiB'
        >>> bar.close()  # erases the line
    """

    LABELS = {"verify": "verifying", "write": "writing"}

    def __init__(self, stream: TextIO, *, width: int = 30, interval: float = 0.1):
        self.stream, self.width, self.interval = stream, width, interval
        self.stage, self.last, self.drawn = "", 0.0, 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage == self.stage and done < total and now - self.last < self.interval:
            return
        self.stage, self.last = stage, now
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.LABELS.get(stage, stage)} [{bar}] {human_size(done)} / {human_size(total)}"
        # Pad with spaces: a shorter line must cover the previous one.
        self.stream.write("\r" + line.ljust(self.drawn))
        self.stream.flush()
        self.drawn = len(line)

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
            self.drawn = 0


def progress_bar() -> ProgressBar | None:
    r"""A progress bar on standard error if it is a terminal: never in pipes or logs."""

    return ProgressBar(sys.stderr) if sys.stderr.isatty() else None


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
        >>> infos = {k: ArrayInfo('float32', (2,), 8) for k in ('.a.value.x', '.a.value.y', '.b')}
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
    r"""The report of :command:`inox-io inspect`."""

    lines = [f"{path}: inox_io format v{manifest.version} ({format_for(path).name})"]
    if manifest.libraries:
        lines.append("written by " + ", ".join(f"{k} {v}" for k, v in manifest.libraries.items()))
    else:
        lines.append("written by another tool: no inox_io manifest, arrays described from the file's header")

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
    if manifest.ties:
        lines.append("ties (explicit sharing)")
        scopes: Dict[str, list] = {}
        for tie in manifest.ties:
            scopes.setdefault(tie.scope, []).append(tie)
        for scope, ties in scopes.items():
            lines.append(f"  scope {scope or '<root>'}")
            rows = [(repr(t.tag), t.path, "aliases " + ", ".join(t.aliases)) for t in ties]
            lines += table(rows, indent="    ")
    else:
        lines.append("ties: none")

    lines.append("")
    if manifest.aliases:
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


def run_inspect(args: argparse.Namespace) -> int:
    manifest = inspect(args.path)
    if args.json:
        print(manifest.to_json())
    else:
        print("\n".join(render(args.path, manifest)))
    return OK


def run_verify(args: argparse.Namespace) -> int:
    bar = progress_bar()
    try:
        manifest = verify(args.path, progress=bar)
    finally:
        if bar:
            bar.close()
    unchecked = sum(info.crc32 is None for info in manifest.arrays.values())
    summary = f"OK: {plural(len(manifest.arrays), 'array')}, {human_size(manifest.nbytes)}, "
    why = f" ({manifest.no_checksums})" if manifest.no_checksums else ""
    if not unchecked:
        summary += "every checksum matches"
    elif unchecked == len(manifest.arrays):
        # e.g. a file written by another tool: a success would say nothing
        print(f"{args.path}: no checksums{why}: nothing verified", file=sys.stderr)
        return OK if args.allow_unchecked else PROBLEM
    else:
        summary += f"{plural(unchecked, 'array')} without checksum{why} (not verified), the others match"
    print(summary)
    return OK


def run_convert(args: argparse.Namespace) -> int:
    if not args.dst.parent.is_dir():
        raise FileNotFoundError(f"{args.dst.parent}: no such directory")
    bar = progress_bar()
    try:
        names = {"torch": torch_names}.get(args.names)
        manifest = convert(args.src, args.dst, overwrite=args.overwrite, progress=bar, names=names, keep=args.keep)
    except FileExistsError:
        print(f"inox-io: {args.dst} already exists; pass --overwrite to replace it", file=sys.stderr)
        return PROBLEM
    finally:
        if bar:
            bar.close()
    print(
        f"converted {args.src} ({format_for(args.src).name}) to {args.dst} ({format_for(args.dst).name}): "
        f"{plural(len(manifest.arrays), 'array')}, {human_size(manifest.nbytes)}, "
        + (f"{plural(len(manifest.aliases), 'shared name')} dropped" if args.names else f"{plural(len(manifest.ties), 'tie')} kept")
    )
    return OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="inox-io",
        description="Inspect, verify and convert inox_io checkpoints (.safetensors, .msgpack).",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd = commands.add_parser("inspect", help="show arrays, ties, statics, metadata and totals")
    cmd.add_argument("path", type=Path, metavar="PATH")
    cmd.add_argument("--json", action="store_true", help="print the manifest JSON as stored")
    cmd.set_defaults(run=run_inspect, paths=["path"])

    cmd = commands.add_parser("verify", help="check every array against its checksum")
    cmd.add_argument("path", type=Path, metavar="PATH")
    cmd.add_argument(
        "--allow-unchecked", action="store_true",
        help="exit 0 when the checkpoint has no checksums at all (e.g. written by another tool): nothing to verify is expected",
    )  # fmt: skip
    cmd.set_defaults(run=run_verify, paths=["path"])

    cmd = commands.add_parser("convert", help="rewrite a checkpoint in another format, ties kept")
    cmd.add_argument("src", type=Path, metavar="SRC")
    cmd.add_argument("dst", type=Path, metavar="DST")
    cmd.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
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

    # Unknown suffixes are usage errors, reported before any work starts.
    for name in args.paths:
        try:
            format_for(getattr(args, name))
        except ValueError as e:
            return fail(e, USAGE)

    try:
        return args.run(args)
    except FileNotFoundError as e:
        return fail(e, USAGE)
    except CheckpointError as e:
        return fail(e, PROBLEM)
    except (OSError, ValueError, TypeError) as e:  # e.g. a full disk, a format's size limit
        return fail(e, PROBLEM)


if __name__ == "__main__":
    raise SystemExit(main())
