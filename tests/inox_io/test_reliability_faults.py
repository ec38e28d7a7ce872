r"""Full disks and I/O errors: a fault (ENOSPC, EIO) is injected into each system call
of a save in turn, through :data:`inox_io.atomic.syscalls`.

Before the commit (the rename, or the hard link without ``overwrite``), a fault must
make the save raise a clear :class:`OSError` and leave the previous checkpoint
byte-for-byte untouched. After the commit (the directory fsync), the path holds the
new, complete checkpoint, and the save still raises: durability was not confirmed.
Either way, no temporary file remains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re

from pathlib import Path
from typing import Iterator, List

import pytest

import inox_io
import inox_io.atomic as atomic

from crash_worker import generation_of, make_tree, own_files

#: System calls that report nothing (their failures are the next fsync's to report).
HINTS = {"writeback"}
#: Every other system call in inox_io.atomic.syscalls, those added later included.
SYSCALLS = tuple(name for name, f in vars(atomic.syscalls).items() if f is not None and name not in HINTS)
WRITES = ("write", "writev", "pwrite")
FORMATS = ["safetensors", "msgpack"]
ERRNOS = [errno.ENOSPC, errno.EIO]


@dataclasses.dataclass
class Faults:
    r"""Which calls fail: the one at :py:`index` (counted from 0 over all the calls of
    :data:`SYSCALLS`), and with :py:`persistent` every later write too (a full disk stays
    full). Records the names of the calls made."""

    index: int = -1
    code: int = errno.EIO
    persistent: bool = False
    calls: List[str] = dataclasses.field(default_factory=list)

    def fails(self, i: int, name: str) -> bool:
        return i == self.index or (self.persistent and 0 <= self.index < i and name in WRITES)


@contextlib.contextmanager
def injected(faults: Faults) -> Iterator[Faults]:
    real = {name: getattr(atomic.syscalls, name) for name in SYSCALLS}

    def wrap(name: str):
        def call(*args, **kwargs):
            i = len(faults.calls)
            faults.calls.append(name)
            if faults.fails(i, name):
                raise OSError(faults.code, os.strerror(faults.code))
            return real[name](*args, **kwargs)

        return call

    for name in SYSCALLS:
        setattr(atomic.syscalls, name, wrap(name))
    try:
        yield faults
    finally:
        for name, function in real.items():
            setattr(atomic.syscalls, name, function)


def save(path: Path, generation: int, overwrite: bool) -> None:
    inox_io.save(path, make_tree(generation), overwrite=overwrite, metadata={"generation": str(generation)})


def leftovers(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir() if atomic.is_temporary(p))


def clean_calls(tmp_path: Path, fmt: str, overwrite: bool) -> List[str]:
    r"""The system calls of a save without faults."""

    path = tmp_path / "probe" / f"model.{fmt}"
    path.parent.mkdir()
    if overwrite:
        save(path, 1, overwrite=False)
    with injected(Faults()) as faults:
        save(path, 2, overwrite=overwrite)
    return faults.calls


@pytest.mark.parametrize("overwrite", [True, False], ids=["replace", "link"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_at_every_call(tmp_path, fmt, overwrite):
    calls = clean_calls(tmp_path, fmt, overwrite)
    commit = "replace" if overwrite else "link"
    # Not vacuous: the save's I/O, data writes included, goes through the injection points.
    assert {"open", "pwrite", "fsync", "close", commit} <= set(calls), calls
    assert {"write", "writev"} & set(calls), calls
    committed_at = calls.index(commit)

    cases = 0
    for index, name in enumerate(calls):
        for code in ERRNOS:
            for persistent in (False, True):
                directory = tmp_path / f"{index}-{code}-{persistent}"
                directory.mkdir()
                path = directory / f"model.{fmt}"
                if overwrite:
                    save(path, 1, overwrite=False)
                before = path.read_bytes() if overwrite else None
                where = f"fault {os.strerror(code)} at call {index} ({name}), persistent={persistent}"

                with injected(Faults(index, code, persistent)) as faults:
                    if name == "unlink" and index > committed_at:
                        # Removing the hard-linked temporary, after the commit: best effort.
                        save(path, 2, overwrite=overwrite)
                        error = None
                    else:
                        with pytest.raises(OSError) as info:
                            save(path, 2, overwrite=overwrite)
                        error = info.value
                assert faults.calls[index] == name, f"{where}: the calls changed: {faults.calls}"

                if error is not None:
                    assert error.errno == code, where
                    assert str(path) in str(error), f"{where}: the error does not name the file: {error}"
                assert leftovers(directory) == [], where
                if index <= committed_at:  # the commit itself failed, or an earlier step
                    assert "not saved" in str(error), f"{where}: unclear error: {error}"
                    if overwrite:
                        assert path.read_bytes() == before, f"{where}: the previous checkpoint changed"
                    else:
                        assert not path.exists(), where
                else:
                    assert generation_of(inox_io.load(path, make_tree(0))) == 2, where
                # The directory is usable afterwards: the next save succeeds.
                save(path, 3, overwrite=True)
                assert generation_of(inox_io.load(path, make_tree(0))) == 3, where
                cases += 1
    assert cases == len(calls) * len(ERRNOS) * 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_disk_error_is_clear(tmp_path, fmt):
    path = tmp_path / f"model.{fmt}"
    save(path, 1, overwrite=False)
    calls = clean_calls(tmp_path, fmt, overwrite=True)
    first_write = min(i for i, name in enumerate(calls) if name in WRITES)
    with injected(Faults(first_write, errno.ENOSPC, persistent=True)):
        with pytest.raises(OSError) as info:
            save(path, 2, overwrite=True)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(path)
    assert "No space left on device" in str(info.value) and "not saved" in str(info.value)
    assert generation_of(inox_io.load(path, make_tree(0))) == 1


def test_cleanup_faults_do_not_fail_the_save(tmp_path):
    r"""Removing a killed saver's temporary is best effort: if that fails, the save
    still succeeds, and a later save removes it."""

    path = tmp_path / "model.safetensors"
    stale = tmp_path / f"{atomic.TEMP_PREFIX}model.safetensors.{2**31 - 1}.0123abcd"  # no such pid
    stale.write_bytes(b"partial")
    with injected(Faults()) as probe:
        save(path, 1, overwrite=False)
    assert probe.calls[0] == "unlink" and leftovers(tmp_path) == []  # it was removed first

    stale.write_bytes(b"partial")
    with injected(Faults(0, errno.EIO)):
        save(path, 2, overwrite=True)
    assert leftovers(tmp_path) == [stale.name]
    save(path, 3, overwrite=True)
    assert leftovers(tmp_path) == []
    assert generation_of(inox_io.load(path, make_tree(0))) == 3


def test_saves_call_the_system_only_through_the_injection_points():
    r"""A direct :mod:`os` write call in the save path would escape these tests."""

    root = Path(inox_io.__file__).parent
    sources = [root / "atomic.py", *(root / "formats" / f for f in ("payload.py", "checksums.py", "transfer.py", "safetensors_file.py", "msgpack_file.py"))]
    direct = re.compile(
        r"\bos\.(open|write|pwrite|writev|pwritev|fsync|fdatasync|close|replace|rename|link|unlink|remove"
        r"|truncate|ftruncate|posix_fallocate|sendfile|copy_file_range)\("
    )
    found = [f"{s.name}:{n}: {line.strip()}" for s in sources for n, line in enumerate(s.read_text().splitlines(), 1) if direct.search(line)]
    assert found == [], "route these calls through inox_io.atomic.syscalls:\n" + "\n".join(found)


#: The layouts of several files: the checkpoint's name and the options of its saves.
LAYOUTS = {"index": ("model.safetensors.index.json", {"max_shard_size": 300}), "sharded": ("ckpt", {})}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fault_at_every_call_of_each_layout(tmp_path, layout):
    r"""A save of an index and its shards, or of a sharded directory, failing at any of
    its system calls: a clear OSError, the previous checkpoint loads whole (or the new
    one, if the fault came after its commit), and the next save leaves nothing else."""

    name, options = LAYOUTS[layout]

    def save_layout(path: Path, generation: int) -> None:
        inox_io.save(path, make_tree(generation), overwrite=True, metadata={"generation": str(generation)}, **options)

    probe = tmp_path / "probe" / name
    probe.parent.mkdir()
    save_layout(probe, 1)
    with injected(Faults()) as clean:
        save_layout(probe, 2)
    calls = clean.calls
    assert {"open", "fsync", "close"} <= set(calls) and set(WRITES) & set(calls), calls

    outcomes = {"old": 0, "new": 0}
    for index, call in enumerate(calls):
        for code in ERRNOS:
            for persistent in (False, True):
                where = f"{layout}: fault {os.strerror(code)} at call {index} ({call}), persistent={persistent}"
                directory = tmp_path / f"{index}-{code}-{persistent}"
                directory.mkdir()
                path = directory / name
                save_layout(path, 1)
                with injected(Faults(index, code, persistent)) as faults:
                    try:
                        save_layout(path, 2)
                        error = None
                    except OSError as e:
                        error = e
                assert faults.calls[index] == call, f"{where}: the calls changed: {faults.calls}"

                generation = generation_of(inox_io.load(path, make_tree(0)))  # whole, verified
                if error is None:
                    assert generation == 2, where
                else:
                    assert error.errno == code and str(path) in str(error), f"{where}: unclear error: {error!r}"
                    if generation == 1:
                        assert "not saved" in str(error) or "untouched" in str(error), f"{where}: {error}"
                outcomes["old" if generation == 1 else "new"] += 1

                save_layout(path, 3)  # the folder is usable, and keeps only the checkpoint
                assert generation_of(inox_io.load(path, make_tree(0))) == 3, where
                assert sorted(os.listdir(directory)) == own_files(path), where
    assert outcomes["old"] > 0, outcomes  # not vacuous: faults did fail saves
