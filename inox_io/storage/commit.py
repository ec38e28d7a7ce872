r"""Checkpoints on object storage, committed without rename: the commit protocol.

A checkpoint at ``scheme://bucket/KEY`` is the files a layout wrote into a local
folder (the checkpoint itself, and the shards beside it for the Hugging Face index),
stored as objects under a fresh *generation* prefix, then committed by one small
object written last, at ``KEY`` itself: the *commit record*, naming the generation and
every file with its size. An object PUT is atomic, so a reader sees the old record or
the new one, each naming complete files; a save killed before its record leaves the
previous checkpoint as it was, and files of its own that nobody reads. Once the new
record is written, the save deletes every other generation under ``KEY.inox-data/``:
the previous checkpoint's files and the leftovers of killed saves.

.. code-block:: text

    KEY                                   the commit record (JSON), written last
    KEY.inox-data/<generation>/<files>    the files of the committed generation (a file
                                          over 64 MiB: then <file>.inox-part-1, -2, ...)
    KEY.inox-data/<other>/...             a killed save's, or the replaced one's

Example:
    >>> record = commit_record('19c3-5f2a', {'model.safetensors': 120})
    >>> parse_record(record, 's3://b/model.safetensors')
    Record(generation='19c3-5f2a', files={'model.safetensors': 120}, object_bytes=67108864)
    >>> parse_record(b'{"safetensors": 1}', 's3://b/model.safetensors')
    Traceback (most recent call last):
      ...
    inox_io.errors.CheckpointError: s3://b/model.safetensors: not an inox_io commit record (expected JSON with "inox_io_commit", "generation", "object_bytes" and "files"; see docs/format.md)
"""

from __future__ import annotations

__all__ = [
    "DATA_SUFFIX", "OBJECT_BYTES", "Record", "commit_record", "parse_record", "object_key", "committed", "new_generation",
    "upload", "commit_generation", "discard", "publish", "fetch", "remove", "children", "clean", "leftovers",
]  # fmt: skip

import json
import os
import secrets
import time

from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

from ..errors import CheckpointError
from .bucket import Bucket, bucket
from .location import ObjectURL
from .ranges import DeferredFiles

#: What follows a checkpoint's key in the prefix of its generations.
DATA_SUFFIX = ".inox-data"
_VERSION = 1
#: Bytes per ranged request, and most bytes in flight (memory held) while moving files.
PART_BYTES, WINDOW_BYTES = 16 << 20, 256 << 20
#: A file's bytes per object: larger files are stored in several (see :func:`object_key`),
#: so that no upload holds a whole file in memory (tensorstore writes whole values).
#: A multiple of PART_BYTES, so that each ranged read lies in one object.
OBJECT_BYTES = 4 * PART_BYTES
_RETRIES = 3  # re-reads of the record when a file vanished under a reader (a newer save)


def commit_record(generation: str, files: Dict[str, int]) -> bytes:
    r"""The commit record of a generation and its files (relative paths, sizes)."""

    record = {"inox_io_commit": _VERSION, "generation": generation, "object_bytes": OBJECT_BYTES, "files": files}
    return json.dumps(record, indent=1).encode()


def object_key(prefix: str, name: str, index: int) -> str:
    r"""The object holding the bytes :py:`[index * OBJECT_BYTES, (index + 1) * OBJECT_BYTES)`
    of the file :py:`name`: the file's own name for the first (so that a file of at most
    :data:`OBJECT_BYTES` is one object of its name), then numbered ones.

    Example:
        >>> object_key('ckpt.inox-data/g/', 'ckpt/0.data', 0), object_key('ckpt.inox-data/g/', 'ckpt/0.data', 2)
        ('ckpt.inox-data/g/ckpt/0.data', 'ckpt.inox-data/g/ckpt/0.data.inox-part-2')
    """

    return prefix + name if index == 0 else f"{prefix}{name}.inox-part-{index}"


class Record(NamedTuple):
    r"""A commit record: the generation, its files (relative paths, sizes), and the
    bytes of a file per object (see :func:`object_key`)."""

    generation: str
    files: Dict[str, int]
    object_bytes: int


def parse_record(data: bytes, url: ObjectURL | str) -> Record:
    r"""The commit record in :py:`data`.

    Raises:
        CheckpointError: if :py:`data` is not a commit record of this version.
    """

    try:
        record = json.loads(data)
        generation, files, object_bytes = record["generation"], record["files"], record["object_bytes"]
        good = record["inox_io_commit"] == _VERSION and isinstance(generation, str) and "/" not in generation
        good = good and type(object_bytes) is int and object_bytes > 0
        good = good and isinstance(files, dict) and all(_safe(n) and type(s) is int and s >= 0 for n, s in files.items())
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        good = False
    if not good:
        raise CheckpointError(
            url,
            'not an inox_io commit record (expected JSON with "inox_io_commit", "generation", "object_bytes" '
            'and "files"; see docs/format.md)',
        )
    return Record(generation, files, object_bytes)


def _safe(name: str) -> bool:
    r"""Whether a file name of a record stays inside the folder it is fetched into."""

    parts = name.split("/")
    return isinstance(name, str) and "\0" not in name and all(p not in ("", ".", "..") for p in parts)


def _data(url: ObjectURL, generation: str = "") -> str:
    return f"{url.key}{DATA_SUFFIX}/{generation}/" if generation else f"{url.key}{DATA_SUFFIX}/"


def committed(url: ObjectURL) -> Record | None:
    r"""The record committed at :py:`url`, or :py:`None`."""

    data = bucket(url).get(url.key)
    return None if data is None else parse_record(data, url)


def _files(folder: Path) -> Dict[str, int]:
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def _batches(spans: List[Tuple[str, int, int]], object_bytes: int) -> List[List[Tuple[str, int, int, int]]]:
    r"""The parts :py:`(name, object, start, stop)` of the byte spans :py:`(name, begin,
    end)` of files (bytes of one object, at most :data:`PART_BYTES`), grouped so that
    each group holds at most :data:`WINDOW_BYTES` (or one part).

    Example:
        >>> _batches([('a', 0, 5), ('b', 0, 0), ('c', 0, 3)], 4)
        [[('a', 0, 0, 4), ('a', 1, 0, 1), ('c', 0, 0, 3)]]
        >>> _batches([('a', 3, 9)], 4)
        [[('a', 0, 3, 4), ('a', 1, 0, 4), ('a', 2, 0, 1)]]
    """

    groups: List[List[Tuple[str, int, int, int]]] = [[]]
    held = 0
    for name, begin, end in spans:
        at = begin
        while at < end:  # empty files: created, not read
            index, start = divmod(at, object_bytes)
            stop = min(object_bytes, start + PART_BYTES, end - index * object_bytes)
            if held + stop - start > WINDOW_BYTES and groups[-1]:
                groups.append([])
                held = 0
            groups[-1].append((name, index, start, stop))
            held += stop - start
            at = index * object_bytes + stop
    return [g for g in groups if g]


def new_generation() -> str:
    r"""A fresh generation name: time-ordered, with random bits against collisions."""

    return f"{time.time_ns():x}-{secrets.token_hex(4)}"


def upload(url: ObjectURL, folder: Path, generation: str) -> Dict[str, int]:
    r"""Stores the files of :py:`folder` under the generation :py:`generation` of
    :py:`url`, uncommitted; returns them (relative paths, sizes) for the record.

    tensorstore's kvstore writes take whole values from memory: each file goes up in
    objects of at most :data:`OBJECT_BYTES`, read from its staged copy as they are
    sent, several at a time, at most :data:`WINDOW_BYTES` (or one object) held.
    """

    store = bucket(url)
    files = _files(folder)
    prefix = _data(url, generation)
    batch: List[Tuple[str, bytes]] = []
    held = 0
    for name, size in files.items():
        with open(folder / name, "rb", buffering=0) as f:
            for index, start in enumerate(range(0, max(size, 1), OBJECT_BYTES)):  # an empty file: one object
                value = os.pread(f.fileno(), min(OBJECT_BYTES, size - start), start)
                if batch and held + len(value) > WINDOW_BYTES:
                    store.put_many(batch)
                    batch, held = [], 0
                batch.append((object_key(prefix, name, index), value))
                held += len(value)
    store.put_many(batch)
    return files


def commit_generation(url: ObjectURL, generation: str, files: Dict[str, int], *, overwrite: bool) -> None:
    r"""Commits the uploaded generation :py:`generation` holding :py:`files` (writes
    the record), then deletes the other generations.

    Raises:
        FileExistsError: if a checkpoint is committed at :py:`url`, and not
            :py:`overwrite`; the generation's files are removed.
    """

    store = bucket(url)
    if not overwrite and committed(url) is not None:  # another writer came first: its checkpoint stays
        discard(url, generation)
        raise FileExistsError(f"{url} appeared during the save; pass overwrite=True to replace it")
    store.put_many([(url.key, commit_record(generation, files))])
    clean(url, keep=(generation,))


def discard(url: ObjectURL, generation: str) -> None:
    r"""Deletes the files of an uncommitted generation (a failed save's)."""

    store = bucket(url)
    store.delete(store.keys(_data(url, generation)))


def publish(url: ObjectURL, folder: Path, *, overwrite: bool) -> None:
    r"""Stores the files of :py:`folder` under a fresh generation of :py:`url`, then
    commits them (:func:`upload`, then :func:`commit_generation`): the save of one writer.

    Raises:
        FileExistsError: if a checkpoint is committed at :py:`url` when the files are
            up, and not :py:`overwrite` (:func:`~inox_io.storage.writing` refuses one
            that is there before anything is staged); its files are removed.
    """

    generation = new_generation()
    commit_generation(url, generation, upload(url, folder, generation), overwrite=overwrite)


def clean(url: ObjectURL, keep: Tuple[str, ...] | None = None) -> None:
    r"""Deletes the generations of :py:`url` but those of :py:`keep` (by default the
    committed one): leftovers of killed saves, a replaced checkpoint."""

    if keep is None:
        record = committed(url)
        keep = () if record is None else (record[0],)
    store = bucket(url)
    prefix = _data(url)
    keep_prefixes = tuple(prefix + g + "/" for g in keep)
    store.delete([k for k in store.keys(prefix) if not k.startswith(keep_prefixes)])


def fetch(
    url: ObjectURL, folder: Path, part: str | None = None, deferred: Callable[[str], bool] = lambda name: False
) -> DeferredFiles:
    r"""Copies the committed files of :py:`url` (those whose path starts with
    :py:`part` only, if given) into :py:`folder`, with ranged requests, several in
    flight. The files whose name :py:`deferred` takes are created at their size but
    not fetched: the returned :class:`~.ranges.DeferredFiles` (names relative to
    :py:`folder`) fetches their byte ranges when asked.

    Raises:
        FileNotFoundError: if no checkpoint is committed at :py:`url`.
        CheckpointError: if a file of the committed generation is missing or has
            another size than the record says.
    """

    store = bucket(url)
    for attempt in range(_RETRIES + 1):
        record = committed(url)
        if record is None:
            _probe_bucket(url)
            raise FileNotFoundError(f"{url}: no such checkpoint (no commit record {url.key!r} in bucket {url.bucket})")
        generation, files, object_bytes = record
        wanted = sorted((n, s) for n, s in files.items() if part is None or n.startswith(part))
        later = {n: s for n, s in wanted if deferred(n.rsplit("/", 1)[-1])}
        prefix = _data(url, generation)
        try:
            _create(folder, wanted)
            # With the files fetched now, one byte of each left for later: that it is
            # there says the generation still is, else the record is read again.
            spans = [(n, 0, s) for n, s in wanted if n not in later] + [(n, 0, 1) for n, s in later.items() if s]
            _download(store, url, prefix, spans, object_bytes, folder)
        except FileNotFoundError:
            again = committed(url)
            if attempt == _RETRIES or again is None or again[0] == generation:
                raise CheckpointError(url, f"generation {generation}: a committed file is missing (damaged)") from None
            continue

        def fetch_later(spans: List[Tuple[str, int, int]]) -> None:
            try:
                _download(store, url, prefix, spans, object_bytes, folder)
            except FileNotFoundError:
                raise CheckpointError(
                    url, f"generation {generation}: replaced by a newer save while it was read (or damaged); read it again"
                ) from None

        def objects(inside: str) -> Dict[str, Any] | None:
            under = [size for name, size in files.items() if name.startswith(inside + "/")]
            if not under or max(under) > object_bytes:
                return None  # a file in parts: fetched, then read locally
            return store.kvstore(prefix + inside + "/")

        def current() -> bool:
            record = committed(url)
            return record is not None and record.generation == generation

        return DeferredFiles(later, fetch_later, objects, current)
    raise AssertionError("unreachable")


def _create(folder: Path, files: List[Tuple[str, int]]) -> None:
    r"""Creates each file at its size (sparse: holes until written)."""

    for name, size in files:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)


def _probe_bucket(url: ObjectURL) -> None:
    r"""Raises the error that says why nothing is at :py:`url`, where a listing tells
    (a missing bucket, denied access): a read of a missing object in a missing bucket
    answers "missing" as in an existing one."""

    try:
        bucket(url).keys(url.key)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError:
        pass  # no better answer than "no such checkpoint" (the GCS emulator's, for one)


def _download(
    store: Bucket, url: ObjectURL, prefix: str, spans: List[Tuple[str, int, int]], object_bytes: int, folder: Path
) -> None:
    r"""Writes the byte spans :py:`(name, begin, end)` of the files, fetched, into the
    local files (which exist)."""

    fds = {}
    try:
        for name, _, _ in spans:
            if name not in fds:
                fds[name] = os.open(folder / name, os.O_WRONLY)
        for group in _batches(spans, object_bytes):
            try:
                values = store.get_ranges([(object_key(prefix, name, i), start, stop) for name, i, start, stop in group])
            except OSError as e:
                if "OUT_OF_RANGE" not in str(e):
                    raise
                raise CheckpointError(url, f"a file is shorter than its commit record says (damaged): {e}") from None
            for (name, index, start, stop), value in zip(group, values):
                if value is None:
                    raise FileNotFoundError(object_key(prefix, name, index))
                offset = index * object_bytes + start
                if len(value) != stop - start:
                    raise CheckpointError(url, f"{name}: {stop - start} bytes expected at {offset}, {len(value)} found")
                os.pwrite(fds[name], value, offset)
    finally:
        for fd in fds.values():
            os.close(fd)


def remove(url: ObjectURL) -> None:
    r"""Deletes a checkpoint: its record first (it is gone at once), then its files."""

    bucket(url).delete([url.key])
    clean(url, keep=())


def children(url: ObjectURL) -> List[str]:
    r"""The names of the checkpoints committed directly under the prefix :py:`url`
    (its records' last key parts)."""

    prefix = f"{url.key}/" if url.key else ""
    names = set()
    for key in bucket(url).keys(prefix):
        name = key[len(prefix):]
        if "/" not in name and not name.endswith(DATA_SUFFIX):
            names.add(name)
    return sorted(names)


def leftovers(url: ObjectURL) -> List[str]:
    r"""The names under the prefix :py:`url` that have generations (committed or not)."""

    prefix = f"{url.key}/" if url.key else ""
    names = set()
    for key in bucket(url).keys(prefix):
        head = key[len(prefix):].split("/", 1)[0]
        if head.endswith(DATA_SUFFIX):
            names.add(head[: -len(DATA_SUFFIX)])
    return sorted(names)
