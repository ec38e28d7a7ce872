r"""Tests of the public functions of inox_io: save, load, inspect, verify, convert and
abstract, on the seed model of the ``inox.nn.share`` specification."""

import os
import stat
import warnings

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inox
import inox.nn as nn
import inox_io
import inox_io.atomic as atomic
import inox_io.formats.payload as payload
from inox_io import CheckpointError

from models import UntiedMLP, WeightSharingMLP, assert_trees_bits_equal, bits_equal

FORMATS = ["safetensors", "msgpack"]
FEATURES = 8


@pytest.fixture(params=FORMATS)
def fmt(request) -> str:
    return request.param


@pytest.fixture
def model() -> WeightSharingMLP:
    return WeightSharingMLP(jax.random.key(0), features=FEATURES)


def abstract_model(features: int = FEATURES) -> WeightSharingMLP:
    return inox_io.abstract(WeightSharingMLP, jax.random.key(0), features=features)


def snapshot(tree) -> tuple:
    r"""Everything that saving must leave alone: the printed tree, each leaf's identity
    and bytes, and the objects at the tied positions."""

    leaves = [
        (jax.tree_util.keystr(path), id(x), type(x), np.asarray(x).tobytes())
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    ]
    return inox.tree.prepr(tree, typeonly=False), leaves


def ties_hold(model: WeightSharingMLP) -> bool:
    return (
        model.l1 is model.l2
        and model.l3.weight is model.l4.weight
        and model.l3.weight.value is model.l4.weight.value
        and not model.l2.pruned
        and not model.l4.weight.pruned
    )


# Save and load


@pytest.mark.parametrize("like_kind", ["abstract", "concrete"])
def test_load_restores_ties_and_values(tmp_path, fmt, model, like_kind):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    like = abstract_model() if like_kind == "abstract" else WeightSharingMLP(jax.random.key(1), features=FEATURES)

    restored = inox_io.load(path, like)

    assert type(restored) is WeightSharingMLP
    assert restored.l1 is restored.l2
    assert restored.l3.weight is restored.l4.weight
    assert restored.l3.weight.value is restored.l4.weight.value
    assert restored.l1.weight.value is restored.l2.weight.value
    assert isinstance(restored.relu, nn.ReLU)
    assert_trees_bits_equal(restored, model)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
    x = jnp.linspace(-1, 1, FEATURES)
    assert bits_equal(restored(x), model(x))
    # The ties survive JAX transformations of the loaded model.
    mapped = jax.tree.map(lambda a: a * 2, restored)
    assert mapped.l1 is mapped.l2 and mapped.l3.weight is mapped.l4.weight


def test_load_keeps_non_array_leaves_of_like(tmp_path, fmt):
    path = tmp_path / f"t.{fmt}"
    inox_io.save(path, {"w": jnp.arange(3.0), "act": "relu", "n": 2})
    like = {"w": jax.ShapeDtypeStruct((3,), jnp.float32), "act": "gelu", "n": 5}

    restored = inox_io.load(path, like)

    assert restored["act"] == "gelu" and restored["n"] == 5
    assert bits_equal(restored["w"], jnp.arange(3.0))


def test_save_leaves_the_tree_alone(tmp_path, fmt, model):
    before = snapshot(model)
    manifest = inox_io.save(tmp_path / f"seed.{fmt}", model, metadata={"k": "v"})

    assert snapshot(model) == before
    assert ties_hold(model)
    # The tree is still usable, and saving it again gives the same manifest.
    model(jnp.ones(FEATURES))
    again = inox_io.save(tmp_path / f"again.{fmt}", model, metadata={"k": "v"})
    assert again.arrays == manifest.arrays and again.ties == manifest.ties


def test_save_leaves_plain_trees_alone(tmp_path, fmt):
    shared = jnp.arange(4.0)
    tree = {"a": [shared, {"b": np.ones(2, np.float16)}], "c": ("x", 3), "d": shared}
    before = snapshot(tree)
    structure = jax.tree.structure(tree)

    with pytest.warns(UserWarning):  # the implicit sharing of `shared`
        inox_io.save(tmp_path / f"t.{fmt}", tree)

    assert snapshot(tree) == before
    assert jax.tree.structure(tree) == structure
    assert tree["a"][0] is tree["d"]


def test_load_leaves_like_alone(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    like = abstract_model()
    before = inox.tree.prepr(like)
    leaves = jax.tree.leaves(like)

    inox_io.load(path, like)

    assert inox.tree.prepr(like) == before
    assert all(a is b for a, b in zip(jax.tree.leaves(like), leaves))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(like))


def test_load_onto_a_sharding_keeps_ties(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    device = jax.devices()[-1]

    restored = inox_io.load(path, abstract_model(), shardings=jax.sharding.SingleDeviceSharding(device))

    assert all(x.devices() == {device} for x in jax.tree.leaves(restored))
    assert restored.l1 is restored.l2 and restored.l3.weight is restored.l4.weight


# Overwriting and atomicity


def test_overwrite_false_refuses_existing_path(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    before = path.read_bytes()
    other = WeightSharingMLP(jax.random.key(7), features=FEATURES)

    with pytest.raises(FileExistsError, match="overwrite=True"):
        inox_io.save(path, other)
    assert path.read_bytes() == before

    inox_io.save(path, other, overwrite=True)
    assert_trees_bits_equal(inox_io.load(path, abstract_model()), other)
    assert os.listdir(tmp_path) == [path.name]  # no temporaries left behind


@pytest.mark.parametrize("overwrite", [False, True])
def test_failed_save_leaves_old_file_and_no_temporary(tmp_path, fmt, model, monkeypatch, overwrite):
    path = tmp_path / f"seed.{fmt}"
    if overwrite:
        inox_io.save(path, model)
    before = path.read_bytes() if overwrite else None
    calls = []

    def failing_host_bytes(x):
        calls.append(x)
        if len(calls) == 3:  # in the middle of the arrays
            raise RuntimeError("device lost")
        return host_bytes(x)

    host_bytes = payload.host_bytes
    monkeypatch.setattr(payload, "host_bytes", failing_host_bytes)
    with pytest.raises(RuntimeError, match="device lost"):
        inox_io.save(path, WeightSharingMLP(jax.random.key(7), features=FEATURES), overwrite=overwrite)

    assert len(calls) == 3
    assert os.listdir(tmp_path) == ([path.name] if overwrite else [])
    if overwrite:
        assert path.read_bytes() == before


def test_target_appearing_during_save_is_not_replaced(tmp_path, fmt, model, monkeypatch):
    path = tmp_path / f"seed.{fmt}"
    write_all = payload.write_all

    def racing_write_all(fd, data):
        if not path.exists():
            path.write_bytes(b"another writer")
        return write_all(fd, data)

    monkeypatch.setattr(payload, "write_all", racing_write_all)
    with pytest.raises(FileExistsError):
        inox_io.save(path, model)

    assert path.read_bytes() == b"another writer"
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_syncs_file_then_commits_then_syncs_directory(tmp_path, fmt, model, monkeypatch, overwrite):
    # The system calls go through atomic.syscalls where it exists (fault injection), else os.
    where = getattr(atomic, "syscalls", os)
    events = []

    def record(name):
        original = getattr(where, name)

        def call(*args, **kwargs):
            if name == "fsync":
                kind = "directory" if stat.S_ISDIR(os.fstat(args[0]).st_mode) else "file"
                events.append(f"fsync {kind}")
            else:
                events.append(f"{name} {Path(args[1]).name}")
            return original(*args, **kwargs)

        monkeypatch.setattr(where, name, call)

    for name in ("fsync", "replace", "link"):
        record(name)
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model, overwrite=overwrite)

    commit = f"{'replace' if overwrite else 'link'} {path.name}"
    assert events == ["fsync file", commit, "fsync directory"]
    assert os.listdir(tmp_path) == [path.name]


# Metadata, tags and implicit sharing


def test_metadata_round_trip(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    metadata = {"step": 1000, "note": "héllo, wörld", "empty": "", "lr": 0.5, "done": False, "none": None, "data": {"files": ["a"]}}
    assert inox_io.save(path, model, metadata=metadata).metadata == metadata
    assert inox_io.inspect(path).metadata == metadata


def test_string_metadata_stays_plain_safetensors_metadata(tmp_path, model):
    from safetensors import safe_open

    path = tmp_path / "export.safetensors"
    inox_io.save(path, model, metadata={"step": 10, "note": "n"}, names=inox_io.torch_names)
    with safe_open(path, "np") as f:
        plain = f.metadata()
    assert plain["note"] == "n" and "step" not in plain
    assert inox_io.inspect(path).metadata == {"step": 10, "note": "n"}


@pytest.mark.parametrize("metadata", [{1: "a"}, {"a": (1, 2)}, {"a": np.float32(1)}, {"a": {"b": jnp.ones(2)}}])
def test_metadata_must_be_json(tmp_path, fmt, model, metadata):
    path = tmp_path / f"seed.{fmt}"
    with pytest.raises(TypeError, match="metadata must map str to JSON values"):
        inox_io.save(path, model, metadata=metadata)
    assert not path.exists()


@pytest.mark.parametrize("tag", ["p", 0, -12, 2**40, ("block", 3), (("a", 1), (2,)), ()])
def test_tags_round_trip(tmp_path, fmt, tag):
    p = nn.Parameter(jnp.arange(3.0))
    tree = nn.Scope(a=nn.Reference(tag, p), b={"c": nn.Reference(tag, p)})
    path = tmp_path / f"t.{fmt}"
    inox_io.save(path, tree)

    (tie,) = inox_io.inspect(path).ties
    assert tie.tag == tag and type(tie.tag) is type(tag)
    assert (tie.path, tie.aliases) == (".a", [".b['c']"])
    restored = inox_io.load(path, tree)
    assert restored.a is restored.b["c"]


@pytest.mark.parametrize("tag", [True, 1.5, None, frozenset({1}), ("ok", 2.0), ("ok", False)])
def test_unsavable_tags_are_refused(tmp_path, fmt, tag):
    p = nn.Parameter(jnp.arange(3.0))
    tree = nn.Scope(a=nn.Reference(tag, p), b=nn.Reference(tag, p))
    path = tmp_path / f"t.{fmt}"

    with pytest.raises(TypeError, match=r"\.a: tag .* cannot be saved"):
        inox_io.save(path, tree)
    assert os.listdir(tmp_path) == []


def test_nested_scopes_keep_their_own_ties(tmp_path, fmt):
    p, q = nn.Parameter(jnp.ones(2)), nn.Parameter(jnp.zeros(2))
    inner = nn.Scope(x=nn.Reference("t", q), y=nn.Reference("t", q))
    tree = nn.Scope(a=nn.Reference("t", p), b=nn.Reference("t", p), inner=inner)
    path = tmp_path / f"t.{fmt}"
    manifest = inox_io.save(path, tree)

    assert [(t.scope, t.path, t.aliases) for t in manifest.ties] == [
        ("", ".a", [".b"]),
        (".inner", ".inner.x", [".inner.y"]),
    ]
    restored = inox_io.load(path, tree)
    assert restored.a is restored.b and restored.inner.x is restored.inner.y
    assert restored.a is not restored.inner.x


def implicit_warnings(record) -> list:
    return [w for w in record if "without a Reference" in str(w.message)]


def test_implicit_sharing_stored_once_with_one_warning(tmp_path, fmt):
    from safetensors import safe_open

    x = jnp.arange(6.0)
    tree = {"a": x, "b": [x, jnp.ones(2)], "c": x}
    path = tmp_path / f"t.{fmt}"

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        manifest = inox_io.save(path, tree)

    (warning,) = implicit_warnings(record)
    assert "['a'] = ['b'][0] = ['c']" in str(warning.message)
    assert warning.filename == __file__  # points at the caller's save
    assert list(manifest.arrays) == ["['a']", "['b'][1]"]
    assert manifest.aliases == {"['b'][0]": "['a']", "['c']": "['a']"}
    if fmt == "safetensors":
        with safe_open(str(path), framework="numpy") as f:
            assert sorted(f.keys()) == ["['a']", "['b'][1]"]

    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    restored = inox_io.load(path, like)
    assert restored["a"] is restored["b"][0] is restored["c"]
    assert bits_equal(restored["c"], x)


def test_implicit_sharing_in_a_module(tmp_path, fmt):
    weight = jnp.eye(3)
    model = nn.Scope(l1=nn.Linear(3, 3, key=jax.random.key(0)), l2=nn.Linear(3, 3, key=jax.random.key(1)))
    model.l1.weight.value = weight
    model.l2.weight.value = weight
    path = tmp_path / f"t.{fmt}"

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        manifest = inox_io.save(path, model)

    assert len(implicit_warnings(record)) == 1
    assert manifest.aliases == {".l2.weight.value": ".l1.weight.value"}
    restored = inox_io.load(path, model)
    assert restored.l1.weight.value is restored.l2.weight.value


def test_explicit_ties_give_no_warning(tmp_path, fmt, model):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        inox_io.save(tmp_path / f"seed.{fmt}", model)
    assert implicit_warnings(record) == []


def test_abstract_arrays_cannot_be_saved(tmp_path, fmt):
    path = tmp_path / f"t.{fmt}"
    with pytest.raises(TypeError, match=r"\['w'\]: cannot save an abstract array"):
        inox_io.save(path, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    assert os.listdir(tmp_path) == []


# Mismatches between the file and like


def test_wrong_shapes_and_dtypes_name_every_path(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    like = abstract_model()
    like.l4.bias.value = jax.ShapeDtypeStruct((FEATURES + 1,), jnp.float32)
    like.l1.weight.value = jax.ShapeDtypeStruct((FEATURES, FEATURES), jnp.bfloat16)
    like.l3.weight.value.value = jax.ShapeDtypeStruct((FEATURES, 2), jnp.int8)

    with pytest.raises(CheckpointError) as info:
        inox_io.load(path, like)

    message = str(info.value)
    assert f".l4.bias.value: float32[{FEATURES + 1}] expected, float32[{FEATURES}] found" in message
    assert f".l1.value.weight.value: bfloat16[{FEATURES}, {FEATURES}] expected, float32[{FEATURES}, {FEATURES}] found" in message
    assert f".l3.weight.value.value: int8[{FEATURES}, 2] expected, float32[{FEATURES}, {FEATURES}] found" in message
    for fine in (".l1.value.bias.value", ".l3.bias.value"):
        assert fine not in message
    # A mismatched array is one problem, not also an unexpected one.
    assert "in the file but not in like" not in message


def test_model_of_another_size(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)

    with pytest.raises(CheckpointError) as info:
        inox_io.load(path, abstract_model(features=4))
    lines = str(info.value).splitlines()[1:]
    assert sorted(line.split(":")[0].strip() for line in lines) == sorted(inox_io.inspect(path).arrays)


def test_untied_like_for_tied_file(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    like = inox_io.abstract(UntiedMLP, jax.random.key(0), features=FEATURES)

    with pytest.raises(CheckpointError) as info:
        inox_io.load(path, like)

    message = str(info.value)
    assert ".l1: tied to nothing in like, to ['.l2'] in the file" in message
    assert ".l3.weight: tied to nothing in like, to ['.l4.weight'] in the file" in message


def test_tied_like_for_untied_file(tmp_path, fmt):
    path = tmp_path / f"untied.{fmt}"
    inox_io.save(path, UntiedMLP(jax.random.key(0), features=FEATURES))

    with pytest.raises(CheckpointError) as info:
        inox_io.load(path, abstract_model())

    message = str(info.value)
    assert ".l1: tied to ['.l2'] in like, to nothing in the file" in message
    assert ".l3.weight: tied to ['.l4.weight'] in like, to nothing in the file" in message


def test_tie_mismatch_non_strict_loads_what_matches(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    like = inox_io.abstract(UntiedMLP, jax.random.key(0), features=FEATURES)

    with pytest.warns(UserWarning, match="loaded partially") as record:
        restored = inox_io.load(path, like, strict=False)

    message = str(record[0].message)
    assert "tied to nothing in like" in message
    # l3 and l4 biases sit at the same positions in both trees.
    assert bits_equal(restored.l3.bias.value, model.l3.bias.value)
    assert bits_equal(restored.l4.bias.value, model.l4.bias.value)
    assert isinstance(restored.l2.weight.value, jax.ShapeDtypeStruct)  # not loaded


def test_strict_reports_missing_and_unexpected(tmp_path, fmt):
    path = tmp_path / f"t.{fmt}"
    inox_io.save(path, {"a": jnp.arange(3.0), "b": jnp.ones(2, jnp.int32)})
    like = {"a": jax.ShapeDtypeStruct((3,), jnp.float32), "c": jax.ShapeDtypeStruct((4,), jnp.float32)}

    with pytest.raises(CheckpointError) as info:
        inox_io.load(path, like)
    assert "['c']: missing from the file" in str(info.value)
    assert "['b']: in the file but not in like" in str(info.value)


def test_non_strict_warns_and_loads_what_matches(tmp_path, fmt):
    path = tmp_path / f"t.{fmt}"
    inox_io.save(path, {"a": jnp.arange(3.0), "b": jnp.ones(2, jnp.int32), "d": jnp.zeros(2)})
    c = jax.ShapeDtypeStruct((4,), jnp.float32)
    d = jax.ShapeDtypeStruct((2,), jnp.bfloat16)
    like = {"a": jax.ShapeDtypeStruct((3,), jnp.float32), "c": c, "d": d}

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        restored = inox_io.load(path, like, strict=False)

    (warning,) = [w for w in record if "loaded partially" in str(w.message)]
    message = str(warning.message)
    assert "['c']: missing from the file" in message
    assert "['b']: in the file but not in like" in message
    assert "['d']: bfloat16[2] expected, float32[2] found" in message
    assert bits_equal(restored["a"], jnp.arange(3.0))
    assert restored["c"] is c and restored["d"] is d  # like's leaves, where nothing fits


def test_non_strict_without_problems_is_silent(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        inox_io.load(path, abstract_model(), strict=False)
    assert [str(w.message) for w in record if "loaded partially" in str(w.message)] == []


# Paths


def test_missing_checkpoint(tmp_path, fmt, model):
    path = tmp_path / f"nothing.{fmt}"
    for call in (lambda: inox_io.load(path, model), lambda: inox_io.inspect(path), lambda: inox_io.verify(path)):
        with pytest.raises(FileNotFoundError):
            call()


def test_unknown_suffix(tmp_path, model):
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        inox_io.save(tmp_path / "model.pkl", model)
    assert os.listdir(tmp_path) == []


def test_paths_may_be_strings(tmp_path, fmt, model):
    path = str(tmp_path / f"seed.{fmt}")
    inox_io.save(path, model)
    assert inox_io.load(path, abstract_model()).l1 is not None
    assert list(inox_io.inspect(path).arrays) == list(inox_io.inspect(Path(path)).arrays)


# inspect, verify, convert


def test_inspect_does_not_read_arrays(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    saved = inox_io.save(path, model)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # damage the last array
    path.write_bytes(bytes(data))

    assert inox_io.inspect(path) == saved
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        inox_io.verify(path)


def test_verify_intact_file(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    saved = inox_io.save(path, model)
    assert inox_io.verify(path) == saved


@pytest.mark.parametrize("src_fmt, dst_fmt", [("safetensors", "msgpack"), ("msgpack", "safetensors")])
def test_convert_keeps_manifest(tmp_path, model, src_fmt, dst_fmt):
    src, dst = tmp_path / f"a.{src_fmt}", tmp_path / f"b.{dst_fmt}"
    saved = inox_io.save(src, model, metadata={"m": "1"})

    inox_io.convert(src, dst)

    converted = inox_io.inspect(dst)
    assert converted.arrays == saved.arrays and converted.ties == saved.ties
    assert converted.metadata == {"m": "1"}
    restored = inox_io.load(dst, abstract_model())
    assert restored.l1 is restored.l2
    assert_trees_bits_equal(restored, model)


def test_convert_refuses_damaged_source(tmp_path, model):
    src, dst = tmp_path / "a.msgpack", tmp_path / "b.safetensors"
    inox_io.save(src, model)
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    src.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="damaged"):
        inox_io.convert(src, dst)
    assert not dst.exists()


# abstract


def test_abstract_keeps_structure_ties_and_statics():
    like = abstract_model()

    assert type(like) is WeightSharingMLP
    assert like.l1 is like.l2 and like.l3.weight is like.l4.weight
    assert isinstance(like.relu, nn.ReLU)
    leaves = jax.tree.leaves(like)
    assert len(leaves) == 5 and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert like.l1.weight.value.shape == (FEATURES, FEATURES)
    assert like.l1.weight.value.dtype == jnp.float32

    tree = inox_io.abstract(lambda n, act: {"w": jnp.ones(n), "act": act}, 3, act="relu")
    assert tree == {"w": jax.ShapeDtypeStruct((3,), jnp.float32), "act": "relu"}


def test_abstract_allocates_nothing():
    # A 40 GB layer: only its shape is computed.
    like = inox_io.abstract(nn.Linear, 100_000, 100_000, key=jax.random.key(0))
    assert like.weight.value.shape == (100_000, 100_000)
    assert isinstance(like.weight.value, jax.ShapeDtypeStruct)


def test_abstract_keys_and_dtypes(tmp_path, fmt):
    def build():
        return {"key": jax.random.key(3), "half": jnp.ones(2, jnp.bfloat16), "int4": jnp.arange(4, dtype=jnp.int4)}

    tree = build()
    path = tmp_path / f"t.{fmt}"
    inox_io.save(path, tree)

    like = inox_io.abstract(build)
    assert like["key"].dtype == tree["key"].dtype
    assert_trees_bits_equal(inox_io.load(path, like), tree)


@pytest.mark.parametrize("enabled", [True, False])
def test_save_and_load_leave_the_garbage_collector_as_they_found_it(tmp_path, enabled):
    import gc
    import threading

    from inox_io.api import _paused_gc

    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        path = tmp_path / "g.safetensors"
        inox_io.save(path, {"w": jnp.ones(3)})
        inox_io.load(path, {"w": jnp.ones(3)})
        assert gc.isenabled() == enabled

        # Overlapping users (threads, nesting): paused until the last one leaves.
        inside, leave = threading.Event(), threading.Event()

        def other():
            with _paused_gc():
                inside.set()
                leave.wait(10)

        thread = threading.Thread(target=other)
        thread.start()
        inside.wait(10)
        with _paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the other thread is still inside
        leave.set()
        thread.join()
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()
