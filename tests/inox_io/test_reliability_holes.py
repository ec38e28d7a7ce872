r"""The holes of reliability round 2 (issue 16), each attack reproduced: a save deleting
files it does not own, FIFOs hanging the readers, invalid shard names, crafted files
switching their checksums off, readers of a checkpoint being replaced, leftovers of
interrupted saves, long names, clear errors for failing disks, memory of compressed
layouts.
"""

from __future__ import annotations

import json
import os
import threading

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import inox_io

from inox_io.atomic import TEMP_PREFIX

TREE = {"a": jnp.arange(300.0), "b": jnp.ones(300)}
INDEX = "model.safetensors.index.json"


def save_index(folder: Path, tree=TREE, **kwargs) -> Path:
    path = folder / INDEX
    inox_io.save(path, tree, max_shard_size=1500, **kwargs)
    return path


def rewrite_index(path: Path, edit) -> None:
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


# 1. An overwrite deletes only what it can prove is its own


@pytest.mark.parametrize("victim", ["outside", "sibling", "itself"])
def test_index_overwrite_deletes_only_its_own_shards(tmp_path, victim):
    folder, outside = tmp_path / "ckpt", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    path = save_index(folder)
    (outside / "precious.txt").write_text("keep me")
    (folder / "sub").symlink_to(outside)
    inox_io.save(folder / "other.safetensors", {"x": jnp.ones(2)})
    name = {"outside": "sub/precious.txt", "sibling": "other.safetensors", "itself": INDEX}[victim]
    rewrite_index(path, lambda index: index["weight_map"].update({"['a']": name}))

    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)

    assert (outside / "precious.txt").read_text() == "keep me"
    assert inox_io.load(folder / "other.safetensors", {"x": jnp.zeros(2)})["x"].tolist() == [1, 1]
    restored = inox_io.load(path, TREE)
    assert np.array_equal(restored["a"], TREE["a"])


def test_index_overwrite_still_removes_its_old_shards(tmp_path):
    path = save_index(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)
    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)
    assert len({p.name for p in tmp_path.iterdir()}) == len(before)


# 2. Readers open only regular files: a FIFO never hangs them


def refused_at_once(read, fifos) -> str:
    r"""Runs :py:`read`, which must raise CheckpointError; if it blocks (on a FIFO),
    the FIFOs are opened for writing to release it, and the test fails."""

    outcome = {}

    def target():
        try:
            read()
            outcome["error"] = None
        except Exception as e:
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)  # a hang guard, not a timing: a refusal takes milliseconds
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(60)
        pytest.fail("the reader blocked on a FIFO")
    assert isinstance(outcome["error"], inox_io.CheckpointError), outcome["error"]
    return str(outcome["error"])


@pytest.mark.parametrize("suffix", ["safetensors", "msgpack"])
def test_fifo_file_is_refused(tmp_path, suffix):
    path = tmp_path / f"pipe.{suffix}"
    os.mkfifo(path)
    for read in (lambda: inox_io.load(path, TREE), lambda: inox_io.inspect(path), lambda: inox_io.verify(path)):
        assert "a FIFO, not a regular file" in refused_at_once(read, [path])


@pytest.mark.parametrize("which", ["index", "shard"])
def test_fifo_in_an_index_is_refused(tmp_path, which):
    path = save_index(tmp_path)
    fifo = path if which == "index" else tmp_path / "model-00001-of-00002.safetensors"
    fifo.unlink()
    os.mkfifo(fifo)
    assert "a FIFO, not a regular file" in refused_at_once(lambda: inox_io.load(path, TREE), [fifo])


@pytest.mark.parametrize("name", ["manifest.json", "arrays/_METADATA", "arrays/manifest.ocdbt"])
def test_fifo_in_a_directory_is_refused(tmp_path, name):
    path = tmp_path / "ckpt"
    save_dir(path, TREE)
    (path / name).unlink()
    os.mkfifo(path / name)
    for read in (lambda: inox_io.load(path, TREE), lambda: inox_io.verify(path)):
        assert "FIFO" in refused_at_once(read, [path / name])


# 7. Invalid shard names


@pytest.mark.parametrize("name", ["a\0b.safetensors", "\ud800.safetensors"])
def test_invalid_shard_name_is_a_checkpoint_error(tmp_path, name):
    path = save_index(tmp_path)
    rewrite_index(path, lambda index: index["weight_map"].update({"['a']": name}))
    with pytest.raises(inox_io.CheckpointError, match="not a valid file name"):
        inox_io.load(path, TREE)
    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)  # and a save replaces it
    assert np.array_equal(inox_io.load(path, TREE)["b"], TREE["b"])


# 8. Checksums required: a crafted null does not switch them off


def null_checksums(data: bytes) -> bytes:
    r"""The file with every ``"crc32":"<8 digits>"`` of its manifest made null (JSON text
    escaped in a safetensors header, plain in msgpack), padded to the same length."""

    import re

    out = re.sub(rb'(\\?"crc32\\?":)\\?"[0-9a-f]{8}\\?"', lambda m: m.group(1) + b"null" + b" " * (len(m.group(0)) - len(m.group(1)) - 4), data)
    assert out != data
    return out


@pytest.mark.parametrize("suffix", ["safetensors", "msgpack"])
def test_crafted_null_checksums_are_refused(tmp_path, suffix):
    path = tmp_path / f"m.{suffix}"
    inox_io.save(path, TREE)
    data = null_checksums(path.read_bytes())
    if suffix == "msgpack":  # the manifest's length is written before it: keep the text's
        data = data.replace(b"null ", b" null").replace(b"null" + b" " * 6, b"null" + b" " * 6)
    path.write_bytes(data.replace(np.float32(7).tobytes(), np.float32(8).tobytes()))  # and data altered
    with pytest.raises(inox_io.CheckpointError, match="without checksum"):
        inox_io.load(path, TREE)
    with pytest.raises(inox_io.CheckpointError, match="no checksum"):
        inox_io.verify(path)
    assert inox_io.load(path, TREE, verify=False)["a"][8] == 8.0  # the caller's choice


def test_crafted_null_checksums_in_an_index_are_refused(tmp_path):
    path = save_index(tmp_path)
    rewrite_index(path, lambda index: index["metadata"].update(inox_io=index["metadata"]["inox_io"].replace('"crc32":"', '"crc32":null,"x":"')))
    with pytest.raises(inox_io.CheckpointError, match="without checksum"):
        inox_io.load(path, TREE)
    assert np.array_equal(inox_io.load(path, TREE, verify=False)["a"], TREE["a"])


def test_a_claim_of_no_checksums_is_believed_only_from_directories(tmp_path):
    path = tmp_path / "m.safetensors"
    inox_io.save(path, TREE)
    manifest = inox_io.inspect(path)
    for info in manifest.arrays.values():
        info.crc32 = None
    manifest.no_checksums = "saved by 2 processes"
    text = manifest.to_json()
    assert inox_io.Manifest.from_json(text, source="m").no_checksums is None
    assert inox_io.Manifest.from_json(text, source="m", no_checksums_by_design=True).no_checksums == "saved by 2 processes"


# 3. Leftovers of interrupted saves


#: Saves a tree as an orbax directory, whichever layout directories get by default.
SAVE_DIR = (
    "from inox_io.formats import format_named\n"
    "from inox_io.manifest import build\n"
    "def save_dir(path, tree, overwrite=False, layout='orbax'):\n"
    "    manifest, arrays = build(tree)\n"
    "    format_named(layout).write(path, manifest, arrays, overwrite=overwrite)\n"
)
exec(SAVE_DIR)


def test_leftovers_of_killed_directory_saves_are_removed(tmp_path):
    path = tmp_path / "ckpt"
    save_dir(path, TREE)
    for pid in (os.getpid(), 1):  # whatever pid: no save holds the folder's lock
        leftover = tmp_path / f"{TEMP_PREFIX}ckpt.{pid}.0123abcd"
        (leftover / "arrays").mkdir(parents=True)
        (leftover / "arrays" / "big").write_bytes(bytes(1000))
    other = tmp_path / f"{TEMP_PREFIX}ckpt.safetensors.1.0123abcd"  # another target's: kept
    other.write_bytes(b"x")
    save_dir(path, TREE, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, "ckpt"])


def test_leftovers_of_killed_index_saves_are_removed(tmp_path):
    path = save_index(tmp_path)
    (tmp_path / "model-0123abcd-00001-of-00002.safetensors").write_bytes(b"partial")  # unreferenced
    (tmp_path / f"{TEMP_PREFIX}model-00001-of-00002.safetensors.1.0123abcd").write_bytes(b"partial")
    (tmp_path / f"{TEMP_PREFIX}{INDEX}.1.0123abcd").write_bytes(b"partial")
    (tmp_path / "model-notes.txt").write_text("not ours")
    inox_io.save(path, TREE, overwrite=True, max_shard_size=1500)
    referenced = set(json.loads(path.read_text())["weight_map"].values())
    assert {p.name for p in tmp_path.iterdir()} == referenced | {INDEX, "model-notes.txt"}


def test_a_live_save_keeps_its_temporaries(tmp_path):
    from inox_io.atomic import save_guard

    path = tmp_path / "ckpt"
    save_dir(path, TREE)
    live = tmp_path / f"{TEMP_PREFIX}ckpt.1.0123abcd"
    live.mkdir()
    with save_guard(tmp_path, lambda: None, target=path):  # a save running in the folder
        save_dir(path, TREE, overwrite=True)
        assert live.exists()
    save_dir(path, TREE, overwrite=True)
    assert not live.exists()


def test_ctrl_c_removes_the_directory_save_temporary(tmp_path):
    import signal
    import subprocess
    import sys

    script = SAVE_DIR + (
        "import numpy as np\n"
        "from pathlib import Path\n"
        "tree = {f'a{i}': np.full((2**18,), i, np.float32) for i in range(64)}\n"
        "print('go', flush=True)\n"
        "try:\n"
        f"    save_dir(Path({str(tmp_path / 'ckpt')!r}), tree)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "go\n"
    while not any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir()) and process.poll() is None:
        pass  # until the save has its temporary
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert "interrupted" in out  # not vacuous: the interrupt came during the save
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == []


# 9. Long names; the old checkpoint moved aside


@pytest.mark.parametrize("name", ["m" * 243 + ".safetensors", "m" * 247 + ".msgpack", "d" * 255])
def test_the_longest_names_can_be_saved(tmp_path, name):
    path = tmp_path / name
    save = save_dir if "." not in name else inox_io.save
    save(path, TREE)
    save(path, TREE, overwrite=True)
    assert np.array_equal(inox_io.load(path, TREE)["a"], TREE["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_index_names_too_long_for_their_shards_are_a_clear_error(tmp_path):
    path = tmp_path / ("m" * 230 + ".safetensors.index.json")  # shards: 230 + 27 bytes
    with pytest.raises(OSError, match="more than the 255 a file name may have"):
        inox_io.save(path, TREE, max_shard_size=1500)
    assert list(tmp_path.iterdir()) == []


def test_an_old_checkpoint_moved_aside_is_restored(tmp_path):
    from inox_io.formats.directory_commit import aside_path

    path = tmp_path / "ckpt"
    save_dir(path, TREE)
    os.rename(path, aside_path(path))  # killed between the two renames of a replacement (no exchange)
    with pytest.raises(FileExistsError):
        save_dir(path, {"a": jnp.zeros(3)})  # the next save finds it first
    assert np.array_equal(inox_io.load(path, TREE)["a"], TREE["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_replacing_without_exchange_leaves_no_aside(tmp_path):
    from inox_io.formats import directory_commit

    path = tmp_path / "ckpt"
    save_dir(path, TREE)
    temp = tmp_path / "new"
    temp.mkdir()
    (temp / "manifest.json").write_text("{}")
    directory_commit.commit(temp, path, True, swap=lambda a, b: False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"] and (path / "manifest.json").read_text() == "{}"


# 5. Readers of a checkpoint being replaced get the old one or the new one


def generation_tree(g: int):
    return {"a": np.full((4096,), g, np.float32), "b": np.full((64, 8), g, np.int32)}


@pytest.mark.parametrize("layout", ["orbax", "sharded", "index"])
def test_readers_during_overwrites_see_no_false_damage(tmp_path, layout):
    import subprocess
    import sys

    path = tmp_path / ("ckpt" if layout != "index" else INDEX)
    if layout == "index":
        save, where = "inox_io.save", f"{str(path)!r}, tree, max_shard_size=8000"
        inox_io.save(path, generation_tree(0), max_shard_size=8000)
    else:
        save, where = "save_dir", f"Path({str(path)!r}), tree, layout={layout!r}"
        save_dir(path, generation_tree(0), layout=layout)
    script = SAVE_DIR + (
        "import numpy as np, inox_io\n"
        "from pathlib import Path\n"
        "for g in range(1, 41):\n"
        "    tree = {'a': np.full((4096,), g, np.float32), 'b': np.full((64, 8), g, np.int32)}\n"
        f"    {save}({where}, overwrite=True)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script])
    like = generation_tree(0)
    seen, failures, loads = set(), [], 0
    while writer.poll() is None:
        try:
            tree = inox_io.load(path, like)
        except inox_io.CheckpointError as e:
            failures.append(str(e))
            continue
        loads += 1
        generations = {int(tree["a"][0]), int(tree["b"][0, 0])} | set(np.unique(tree["a"]).tolist())
        assert len(generations) == 1, f"a mix of saves: {generations}"
        seen |= generations
    assert writer.wait() == 0
    assert failures == [], f"{len(failures)} of {loads + len(failures)} loads failed: {failures[:3]}"
    assert len(seen) > 2, "not vacuous: the loads saw the checkpoint change"


# 6. Failing disks in every layout: OSError with its errno, the path, the old one untouched


@pytest.mark.parametrize("layout", ["orbax", "index"])
def test_a_failing_disk_is_a_clear_oserror(tmp_path, layout):
    r"""Files may not grow past 1 MiB (``RLIMIT_FSIZE``): each write past it fails with
    ``EFBIG``, a real failure of the kernel, as a full disk's ``ENOSPC`` is."""

    import subprocess
    import sys

    path = tmp_path / ("ckpt" if layout == "orbax" else INDEX)
    save = "save_dir(path, tree, overwrite=True)" if layout == "orbax" else "inox_io.save(path, tree, overwrite=True)"
    script = SAVE_DIR + (
        "import errno, resource, signal, numpy as np, inox_io\n"
        "from pathlib import Path\n"
        f"path = Path({str(path)!r})\n"
        "tree = {'x': np.ones(1000, np.float32)}\n"
        f"{save.replace('overwrite=True', 'overwrite=False')}\n"
        "tree = {'x': np.random.default_rng(0).random(2**20, np.float32)}\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))\n"
        "try:\n"
        f"    {save}\n"
        "except OSError as e:\n"
        "    print(e.errno, e.filename, e.strerror, sep='|')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300).stdout
    code, filename, message = out.strip().split("|")
    assert int(code) == 27 and filename == str(path), out  # EFBIG, the user's path
    assert "not saved; the checkpoint there, if any, is untouched" in message
    assert inox_io.load(path, {"x": jnp.zeros(1000)})["x"].tolist() == [1.0] * 1000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == []


# 4. A load's memory: the arrays it returns and a bounded working set, in every layout

MEMORY_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np, orbax.checkpoint, inox_io
path, shape, like = sys.argv[1], tuple(json.loads(sys.argv[2])), sys.argv[3] == 'like'
if sys.argv[4] == 'save':
    inox_io.save(path, {'w': np.zeros(shape, np.float32)}, format='orbax')
    sys.exit()
inox_io.inspect(path)
jax.devices()  # the runtime started before, not counted
def status(field):  # kB, as /proc/self/status gives them
    return next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith(field + ':'))
open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) starts again from here
before = status('VmRSS')
tree = inox_io.load(path, {'w': jax.ShapeDtypeStruct(shape, jnp.float32)} if like else None)
jax.block_until_ready(tree)
print(status('VmHWM') - before)
"""


@pytest.mark.parametrize("like", ["like", "no like"])
def test_a_compressed_load_holds_its_arrays_and_a_bounded_working_set(tmp_path, like):
    r"""Loading a 256 MiB array from the orbax layout (compressed: tensorstore decodes
    whole chunks) grows the process by at most 1.1x the array + 100 MB, counted by the
    kernel's peak of resident memory over the load (reset before it). Orbax's restore
    peaked at 2.13x."""

    import subprocess
    import sys

    shape, nbytes = [256, 1024, 256], 2**28
    run = lambda *args: subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "ckpt"), json.dumps(shape), like, *args],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    run("save")
    grown = int(run("load").split()[-1])
    assert grown <= 1.1 * nbytes + 100e6, f"{grown / nbytes:.2f}x the array"


def test_an_untrusted_compressed_checkpoint_is_bounded_by_max_expansion(tmp_path):
    r"""A 30 KB directory declaring 64 MiB of zeros: refused under a limit of declared
    against stored bytes, before anything is read; loaded when the caller allows it."""

    inox_io.save(tmp_path / "ckpt", {"w": np.zeros(2**24, np.float32)}, format="orbax")
    with pytest.raises(inox_io.CheckpointError, match=r"max_expansion=100 times"):
        inox_io.load(tmp_path / "ckpt", max_expansion=100)
    assert inox_io.load(tmp_path / "ckpt", max_expansion=1e6)["['w']"].shape == (2**24,)
    small = tmp_path / "small.safetensors"
    inox_io.save(small, {"w": np.zeros(2**16, np.float32)})
    assert inox_io.load(small, max_expansion=1.0)["['w']"].shape == (2**16,)  # raw: never more than stored
