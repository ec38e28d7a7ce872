r"""Damaged checkpoints of the layouts made of several files: a sharded directory, an
orbax directory and a Hugging Face index. Each case damages one file of a checkpoint
(its manifest, its index, a shard, orbax's records or chunks): bits flipped, bytes
overwritten, the file cut short or grown.

Every read (a load with and without a ``like``, and a verification) must end in
:class:`inox_io.CheckpointError` or return exactly the saved values: never another
exception, never altered arrays, never a hang (each case runs under a deadline of
work, an ``alarm``, not a timing assertion: a hang is the only thing it catches).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal

from pathlib import Path
from typing import Iterator, List, Tuple

import jax
import numpy as np
import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

import inox_io

from crash_worker import make_tree

TREE = {"model": make_tree(5), "key": jax.random.key(3), "noise": np.random.default_rng(0).random((40, 30), np.float32)}
#: What a load without a like returns from the undamaged checkpoint (the same in every
#: layout), and its stored keys.
FLAT, STORED = {}, []

#: Where each layout's checkpoint is, in its folder, and how it is saved.
LAYOUTS = {
    "sharded": ("ckpt", {}),
    "orbax": ("ckpt", {"format": "orbax"}),
    "index": ("model.safetensors.index.json", {"max_shard_size": 2000}),
}
EXAMPLES = 40  #: per layout and kind of damage (the slow variant: SLOW_FACTOR times more)
SLOW_FACTOR = 10
HANG_SECONDS = 60  #: a case taking this long is taken for a hang


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def original(request, tmp_path_factory) -> Tuple[str, Path]:
    folder = tmp_path_factory.mktemp(f"original-{request.param}")
    name, options = LAYOUTS[request.param]
    inox_io.save(folder / name, TREE, **options)
    FLAT.clear()
    FLAT.update(inox_io.load(folder / name))
    STORED[:] = inox_io.inspect(folder / name).arrays
    return request.param, folder


def files_of(folder: Path) -> List[Path]:
    r"""The checkpoint's files, relative to its folder, in a fixed order."""

    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def leaves(tree) -> list:
    out = []
    for x in jax.tree.leaves(tree):
        if isinstance(x, (str, int, float, bool)):
            out.append(x)
            continue
        x = jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        x = np.asarray(x)
        out.append((x.dtype.name, x.shape, x.tobytes()))
    return out


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def hang(*_):
        raise AssertionError(f"a read of a damaged checkpoint took over {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_reads(path: Path) -> None:
    r"""Every read of a damaged checkpoint: an error, or exactly the saved values."""

    with deadline(HANG_SECONDS):
        try:
            loaded = inox_io.load(path, TREE)
        except inox_io.CheckpointError:
            pass
        else:
            assert leaves(loaded) == leaves(TREE), "damaged bytes were loaded as values"
        try:
            flat = inox_io.load(path)
        except inox_io.CheckpointError:
            pass
        else:
            # The stored arrays, exactly. The manifest's text has no checksum: a tie's
            # alias or a static renamed may pass (docs/reliability.md, "Not covered"); a
            # like, which the tree's structure must fit, catches them.
            stored = sorted(inox_io.inspect(path).arrays)
            assert stored == sorted(STORED), "damage changed which arrays are stored"
            assert leaves([flat[k] for k in stored]) == leaves([FLAT[k] for k in stored]), "damaged bytes were loaded as values"
        try:
            inox_io.verify(path)
        except inox_io.CheckpointError:
            pass


Damage = Tuple[int, str, int, bytes]  # which file, how, where (a fraction of its size), bytes


def damage_strategy() -> st.SearchStrategy:
    return st.tuples(
        st.integers(0, 10**6),
        st.sampled_from(["flip", "overwrite", "truncate", "append"]),
        st.integers(0, 10**6),
        st.binary(min_size=1, max_size=16),
    )


def damaged_copy(original: Tuple[str, Path], damage: Damage, workdir: Path) -> Path:
    r"""A copy of the original checkpoint's folder, with one of its files damaged."""

    layout, folder = original
    case = workdir / "case"
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(folder, case)
    which, how, where, data = damage
    files = files_of(case)
    target = case / files[which % len(files)]
    content = bytearray(target.read_bytes())
    at = where % max(len(content), 1)
    if how == "flip" and content:
        content[at] ^= 1 << (data[0] % 8)
    elif how == "overwrite" and content:
        content[at : at + len(data)] = bytes(b ^ 0xFF if b == c else b for b, c in zip(data, content[at : at + len(data)]))
    elif how == "truncate":
        del content[at:]
    else:
        content += data
    os.chmod(target, 0o644)
    target.write_bytes(bytes(content))
    return case / LAYOUTS[layout][0]


def run_damage(original, workdir: Path, examples: int) -> int:
    r"""Runs :py:`examples` damaged copies; returns how many ran."""

    count = [0]

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(damage_strategy())
    def case(damage):
        count[0] += 1
        check_reads(damaged_copy(original, damage, workdir))

    case()
    return count[0]


def test_damaged_files_of_each_layout(original, tmp_path):
    assert run_damage(original, tmp_path, EXAMPLES) == EXAMPLES


def test_every_file_of_each_layout_truncated_and_emptied(original, tmp_path):
    r"""Each file of the checkpoint cut to half, to nothing, and removed."""

    layout, folder = original
    for index, name in enumerate(files_of(folder)):
        size = (folder / name).stat().st_size
        for damage in [(index, "truncate", size // 2, b"\0"), (index, "truncate", 0, b"\0")]:
            check_reads(damaged_copy(original, damage, tmp_path))
        path = damaged_copy(original, (0, "append", 0, b""), tmp_path)
        (tmp_path / "case" / name).unlink()
        if path == tmp_path / "case" / name:  # the index itself: no checkpoint there
            with pytest.raises(FileNotFoundError, match="no such checkpoint"):
                inox_io.load(path, TREE)
        else:
            check_reads(path)


def test_undamaged_copy_loads(original, tmp_path):
    path = damaged_copy(original, (0, "append", 0, b""), tmp_path)  # nothing appended
    assert leaves(inox_io.load(path, TREE)) == leaves(TREE)


@pytest.mark.slow
def test_damaged_files_of_each_layout_long(original, tmp_path):
    assert run_damage(original, tmp_path, EXAMPLES * SLOW_FACTOR) == EXAMPLES * SLOW_FACTOR
