r"""Tests of the v1 file formats: the manifest, the safetensors and msgpack layouts, exact
round-trips of every dtype, and the errors raised for damaged or malformed files."""

import ast
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from safetensors import safe_open

import inox_io
from inox_io import ArrayInfo, CheckpointError, Manifest, TieInfo

from models import WeightSharingMLP, assert_trees_bits_equal, bits_equal, dtype_zoo, x64_arrays

FORMATS = ["safetensors", "msgpack"]
SEED_KEYS = [
    ".l1.value.bias.value",
    ".l1.value.weight.value",
    ".l3.bias.value",
    ".l3.weight.value.value",
    ".l4.bias.value",
]
SEED_TIES = [
    TieInfo(scope="", tag="l1", path=".l1", aliases=[".l2"]),
    TieInfo(scope="", tag="l3.weight", path=".l3.weight", aliases=[".l4.weight"]),
]


@pytest.fixture(params=FORMATS)
def fmt(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model() -> WeightSharingMLP:
    return WeightSharingMLP(jax.random.key(0), features=8)


@pytest.fixture(scope="module")
def zoo():
    return dtype_zoo()


def seed_arrays(model: WeightSharingMLP) -> dict:
    r"""The five stored arrays of the seed model, by the key paths of the specification."""

    return {
        ".l1.value.bias.value": model.l1.bias.value,
        ".l1.value.weight.value": model.l1.weight.value,
        ".l3.bias.value": model.l3.bias.value,
        ".l3.weight.value.value": model.l3.weight.value.value,
        ".l4.bias.value": model.l4.bias.value,
    }


def save_quietly(path, tree, **kwargs):
    # The dtype zoo holds an implicit alias on purpose; its warning is tested in test_api.
    with pytest.warns(UserWarning, match="without a Reference"):
        return inox_io.save(path, tree, **kwargs)


def exact_like(tree):
    r"""Abstract leaves with the exact dtypes of a tree (:func:`inox_io.abstract` would
    narrow 64-bit NumPy constants without x64)."""

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


# Rewriting files: the same logical damage in both formats.


def read_header(path: Path):
    r"""Returns the parsed header and the bytes after it, per format."""

    data = path.read_bytes()
    if path.suffix == ".safetensors":
        (n,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8 : 8 + n]), data[8 + n :]
    return msgpack.unpackb(data), b""


def write_header(path: Path, header, rest: bytes) -> None:
    if path.suffix == ".safetensors":
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + rest)
    else:
        path.write_bytes(msgpack.packb(header))


def edit_manifest(path: Path, edit) -> None:
    r"""Applies :py:`edit` to the manifest (parsed JSON) stored in a file."""

    header, rest = read_header(path)
    holder = header["__metadata__"] if path.suffix == ".safetensors" else header
    manifest = json.loads(holder["inox_io"])
    edit(manifest)
    holder["inox_io"] = json.dumps(manifest)
    write_header(path, header, rest)


def raw_manifest(path: Path) -> dict:
    header, _ = read_header(path)
    holder = header["__metadata__"] if path.suffix == ".safetensors" else header
    return json.loads(holder["inox_io"])


# The manifest


def test_manifest_of_seed_model(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    saved = inox_io.save(path, model, metadata={"step": "10", "run": "a"})
    manifest = inox_io.inspect(path)

    assert manifest == saved
    assert (manifest.format, manifest.version) == ("inox_io", 1)
    assert manifest.libraries["inox_io"] == inox_io.__version__
    assert manifest.libraries["jax"] == jax.__version__
    assert manifest.libraries["numpy"] == np.__version__
    assert {"inox", "python"} <= set(manifest.libraries)
    assert list(manifest.arrays) == SEED_KEYS
    for key, x in seed_arrays(model).items():
        host = np.asarray(x)
        assert manifest.arrays[key] == ArrayInfo("float32", host.shape, host.nbytes, f"{zlib.crc32(host.tobytes()):08x}")
    assert manifest.ties == SEED_TIES
    assert manifest.aliases == {}
    assert manifest.metadata == {"step": "10", "run": "a"}
    assert manifest.nbytes == sum(np.asarray(x).nbytes for x in seed_arrays(model).values())
    # l2 (weight and bias) and l4.weight are stored once, under l1 and l3.weight.
    assert manifest.saved_bytes() == 2 * 8 * 8 * 4 + 8 * 4


def test_manifest_positions_map_aliases_to_stored_keys(tmp_path, model):
    manifest = inox_io.save(tmp_path / "seed.msgpack", model)
    positions = manifest.positions()

    assert positions[".l2.value.weight.value"] == ".l1.value.weight.value"
    assert positions[".l2.value.bias.value"] == ".l1.value.bias.value"
    assert positions[".l4.weight.value.value"] == ".l3.weight.value.value"
    assert positions[".l4.bias.value"] == ".l4.bias.value"
    assert len(positions) == 8


def test_ties_and_statics_come_from_the_structure_alone(model):
    # Saves and loads read ties and statics from the tree definition (cached): they
    # must be what walking the tree itself finds, and callers must get their own copies.
    import inox.nn as nn
    from inox_io.manifest import structure_statics, structure_ties, tree_arrays

    p, z = nn.Parameter(jnp.ones(2)), jnp.zeros(3)
    nested = nn.Scope(
        outer=nn.Reference("o", p),
        inner=nn.Scope(a=nn.Reference(("t", 1), z), b=[nn.Reference(("t", 1), z)], act="gelu"),
        again=nn.Reference("o", p),
        rate=0.5,
    )
    for tree in (model, nested, {"x": jnp.ones(1), "n": 3, "f": print}):
        treedef, _ = tree_arrays(tree)
        walked = [TieInfo(t.scope, t.tag, t.path, list(t.aliases)) for t in nn.share.ties(tree)]
        assert structure_ties(treedef) == walked
        structure_ties(treedef).clear()
        structure_statics(treedef)["injected"] = 1
        assert structure_ties(treedef) == walked
        assert "injected" not in structure_statics(treedef)

    treedef, _ = tree_arrays(nested)
    assert structure_ties(treedef) == [
        TieInfo(scope="", tag="o", path=".again", aliases=[".outer"]),  # keys in sorted order
        TieInfo(scope=".inner", tag=("t", 1), path=".inner.a", aliases=[".inner.b[0]"]),
    ]
    assert structure_statics(treedef) == {".inner.act": "gelu", ".rate": 0.5}
    treedef, _ = tree_arrays({"x": jnp.ones(1), "n": 3, "f": print})
    assert structure_statics(treedef) == {"['n']": 3}

def test_manifest_is_strict_json_and_round_trips(tmp_path, fmt, zoo):
    path = tmp_path / f"zoo.{fmt}"
    manifest = save_quietly(path, zoo)

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    text = manifest.to_json()
    json.loads(text, parse_constant=no_constants)
    assert Manifest.from_json(text, source="test") == manifest
    # Tags keep their types: a tuple stays a tuple, an int an int.
    assert [(t.tag, t.path, t.aliases) for t in inox_io.inspect(path).ties] == [
        (("block", 0), ".first", [".second"]),
        (7, ".lucky[0]", [".lucky[1]"]),
    ]


def test_static_leaves_in_manifest(tmp_path, fmt):
    tree = {
        "w": jnp.ones(2),
        "act": "relu",
        "n": 3,
        "rate": 0.5,
        "on": False,
        "nan": float("nan"),  # not JSON: left out
        "fn": jnp.tanh,  # not JSON: left out
    }
    manifest = inox_io.save(tmp_path / f"t.{fmt}", tree)

    assert manifest.statics == {"['act']": "relu", "['n']": 3, "['on']": False, "['rate']": 0.5}
    assert inox_io.inspect(tmp_path / f"t.{fmt}").statics == manifest.statics


# The layouts, read by plain libraries


def test_safetensors_is_plain_safetensors(tmp_path, model):
    from safetensors.flax import load_file as load_flax
    from safetensors.numpy import load_file as load_numpy

    path = tmp_path / "seed.safetensors"
    manifest = inox_io.save(path, model, metadata={"note": "plain"})
    expected = seed_arrays(model)

    for tensors in (load_flax(str(path)), load_numpy(str(path))):
        assert sorted(tensors) == SEED_KEYS
        for key, x in expected.items():
            assert bits_equal(np.asarray(tensors[key]), np.asarray(x)), key

    with safe_open(str(path), framework="flax") as f:
        assert sorted(f.keys()) == SEED_KEYS
        metadata = f.metadata()
    assert list(metadata) == ["inox_io"]
    assert Manifest.from_json(metadata["inox_io"], source=str(path)) == manifest


def test_safetensors_header_dtypes(tmp_path, zoo):
    path = tmp_path / "zoo.safetensors"
    manifest = save_quietly(path, zoo)
    header, data = read_header(path)
    header.pop("__metadata__")

    assert set(header) == set(manifest.arrays)
    native = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "bool": "BOOL", "int8": "I8", "uint32": "U32"}
    for key, info in manifest.arrays.items():
        entry = header[key]
        begin, end = entry["data_offsets"]
        assert end - begin == info.nbytes, key
        if info.dtype in native:
            assert (entry["dtype"], entry["shape"]) == (native[info.dtype], list(info.shape)), key
        elif info.key_impl:  # key data as uint32, with its trailing dimension
            assert entry["dtype"] == "U32" and entry["shape"][: len(info.shape)] == list(info.shape), key
    # Dtypes that safetensors does not know are raw bytes.
    assert (header[".x32['int4']"]["dtype"], header[".x32['int4']"]["shape"]) == ("U8", [16])
    assert header[".x64['complex128']"]["dtype"] == "U8"
    # Each array is aligned to its item size from the start of the data.
    for key, info in manifest.arrays.items():
        assert header[key]["data_offsets"][0] % info.storage_dtype.itemsize == 0, key
    assert len(data) == manifest.nbytes


def test_safetensors_zoo_readable_by_plain_safetensors(tmp_path, zoo):
    path = tmp_path / "zoo.safetensors"
    manifest = save_quietly(path, zoo)

    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            info = manifest.arrays[key]
            if info.dtype in ("float8_e4m3fn", "float8_e5m2"):
                continue  # safetensors' NumPy backend lacks float8 (a limitation of safetensors)
            tensor = f.get_tensor(key)
            assert tensor.nbytes == info.nbytes, key


def test_msgpack_is_plain_msgpack(tmp_path, model):
    path = tmp_path / "seed.msgpack"
    manifest = inox_io.save(path, model)
    data = msgpack.unpackb(path.read_bytes())

    assert list(data) == ["inox_io", "arrays"]
    assert Manifest.from_json(data["inox_io"], source=str(path)) == manifest
    assert list(data["arrays"]) == SEED_KEYS
    for key, x in seed_arrays(model).items():
        assert data["arrays"][key] == np.asarray(x).tobytes(), key


# Exact round-trips of every dtype

X32 = {name: x for name, x in dtype_zoo().x32.items() if name != "again"}
KEYS = dict(dtype_zoo().keys)


@pytest.mark.parametrize("name", sorted(X32))
def test_dtype_round_trip(tmp_path, fmt, name):
    x = X32[name]
    path = tmp_path / f"x.{fmt}"
    inox_io.save(path, {"x": x})
    assert inox_io.inspect(path).arrays["['x']"].dtype == np.dtype(x.dtype).name

    restored = inox_io.load(path, {"x": jax.ShapeDtypeStruct(x.shape, x.dtype)})["x"]
    assert isinstance(restored, jax.Array)
    assert bits_equal(restored, x), f"{restored} != {x}"


@pytest.mark.parametrize("name", sorted(KEYS))
def test_prng_key_round_trip(tmp_path, fmt, name):
    key = KEYS[name]
    path = tmp_path / f"k.{fmt}"
    manifest = inox_io.save(path, {"k": key})
    assert manifest.arrays["['k']"].key_impl == str(jax.random.key_impl(key))

    restored = inox_io.load(path, {"k": jax.ShapeDtypeStruct(key.shape, key.dtype)})["k"]
    assert restored.dtype == key.dtype and restored.shape == key.shape
    assert bits_equal(restored, key)
    if key.size:  # still a working key
        assert bits_equal(jax.random.bits(restored[(0,) * key.ndim]), jax.random.bits(key[(0,) * key.ndim]))


def test_x64_arrays_without_x64_stay_exact_numpy(tmp_path, fmt):
    assert not jax.config.jax_enable_x64
    arrays = x64_arrays()
    path = tmp_path / f"x64.{fmt}"
    inox_io.save(path, arrays)

    for like in (arrays, exact_like(arrays)):
        restored = inox_io.load(path, like)
        for name, x in arrays.items():
            # JAX would narrow them to 32 bits: they come back as NumPy arrays, bit-exact.
            assert type(restored[name]) is np.ndarray, name
            assert bits_equal(restored[name], x), name


def test_whole_zoo_round_trip(tmp_path, fmt, zoo):
    path = tmp_path / f"zoo.{fmt}"
    save_quietly(path, zoo)
    like = exact_like(zoo)
    assert like.first is like.second  # the map keeps the ties

    restored = inox_io.load(path, like)
    assert_trees_bits_equal(restored, zoo)
    assert restored.first is restored.second
    assert restored.lucky[0] is restored.lucky[1]
    assert restored.x32["again"] is restored.x32["float32"]
    assert (restored.name, restored.depth, restored.ratio, restored.flag) == ("dtype-zoo", 3, 0.5, True)


X64_SCRIPT = textwrap.dedent(
    r"""
    import sys, jax, numpy as np
    assert jax.config.jax_enable_x64
    sys.path.insert(0, sys.argv[1])
    import inox_io
    from models import dtype_zoo, assert_trees_bits_equal
    import warnings
    warnings.simplefilter("ignore", UserWarning)  # the zoo's implicit alias
    zoo = dtype_zoo()
    for suffix in (".safetensors", ".msgpack"):
        path = sys.argv[2] + "/zoo" + suffix
        inox_io.save(path, zoo)
        restored = inox_io.load(path, inox_io.abstract(dtype_zoo))
        assert_trees_bits_equal(restored, zoo)
        for name, x in restored.x64.items():
            assert isinstance(x, jax.Array) and x.dtype == zoo.x64[name].dtype, (name, type(x), x.dtype)
        assert restored.first is restored.second
    print("x64 ok")
    """
)


def test_x64_arrays_with_x64_are_jax_arrays(tmp_path):
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", X64_SCRIPT, str(Path(__file__).parent), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "x64 ok" in result.stdout


ROUND_TRIP_DTYPES = [np.dtype(d) for d in (
    "bool", "int8", "int16", "int32", "uint8", "uint16", "uint32", "float16", "float32", "complex64",
    ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e4m3b11fnuz, ml_dtypes.float8_e5m2fnuz, ml_dtypes.float8_e3m4, ml_dtypes.float8_e4m3,
    ml_dtypes.float8_e8m0fnu,
)]  # fmt: skip


@st.composite
def random_arrays(draw):
    dtype = draw(st.sampled_from(ROUND_TRIP_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == np.bool_:
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool).reshape(shape)
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)  # any bit pattern, NaN payloads included


@settings(max_examples=30, deadline=None)
@given(arrays=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True), random_arrays(), max_size=5))
def test_random_trees_round_trip(tmp_path_factory, arrays):
    folder = tmp_path_factory.mktemp("random")
    for suffix in (".safetensors", ".msgpack"):
        path = folder / f"t{suffix}"
        inox_io.save(path, arrays)
        restored = inox_io.load(path, exact_like(arrays))
        assert sorted(restored) == sorted(arrays)
        for name, x in arrays.items():
            assert bits_equal(restored[name], x), (suffix, name, x, restored[name])


# Damaged files


def byte_range(path: Path, x) -> tuple:
    r"""Where the bytes of an array lie in a file, found by content: damaging the file
    there damages that array whatever the format."""

    data, needle = path.read_bytes(), np.asarray(x).tobytes()
    begin = data.find(needle)
    assert begin > 0 and data.find(needle, begin + 1) < 0, "the array's bytes must occur once"
    return begin, begin + len(needle)


def test_corrupted_byte_names_the_key(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    begin, end = byte_range(path, model.l3.weight.value.value)
    data = bytearray(path.read_bytes())
    data[(begin + end) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    like = inox_io.abstract(WeightSharingMLP, jax.random.key(0), features=8)

    with pytest.raises(CheckpointError, match=r"\.l3\.weight\.value\.value: checksum mismatch") as info:
        inox_io.load(path, like)
    assert info.value.path == str(path)
    with pytest.raises(CheckpointError, match=r"\.l3\.weight\.value\.value") as info:
        inox_io.verify(path)
    assert ".l1.value.weight.value" not in str(info.value)  # only the damaged array is named

    # The damage is the single flipped bit, loaded as it is when verification is off.
    restored = inox_io.load(path, like, verify=False)
    diff = np.asarray(restored.l3.weight.value.value) != np.asarray(model.l3.weight.value.value)
    assert diff.sum() == 1
    assert restored.l3.weight is restored.l4.weight


def test_corrupted_checksum_in_manifest(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    edit_manifest(path, lambda m: m["arrays"][".l4.bias.value"].update(crc32="00000000"))

    with pytest.raises(CheckpointError, match=r"\.l4\.bias\.value: checksum mismatch"):
        inox_io.load(path, model)


# Chunk checksums (format 1.1): arrays larger than one chunk


def test_chunk_checksums_of_large_arrays(tmp_path, fmt):
    r"""An array of 3 MiB and 20 bytes gets the CRC-32 of each 1 MiB chunk (the last
    one 20 bytes) beside its own; a small one gets none. The index's manifest repeats
    its shards'."""

    tree = {"big": np.arange(3 * 2**18 + 5, dtype=np.float32), "small": np.ones(3, np.float32)}
    path = tmp_path / f"tree.{fmt}"
    inox_io.save(path, tree)
    manifest = raw_manifest(path)
    assert (manifest["version"], manifest["minor_version"], manifest["chunk_crc32_bytes"]) == (1, 1, 2**20)
    data = tree["big"].tobytes()
    expected = [f"{zlib.crc32(data[i : i + 2**20]):08x}" for i in range(0, len(data), 2**20)]
    assert manifest["arrays"]["['big']"]["chunk_crc32"] == expected and len(expected) == 4
    assert manifest["arrays"]["['big']"]["crc32"] == f"{zlib.crc32(data):08x}"
    assert "chunk_crc32" not in manifest["arrays"]["['small']"]
    assert inox_io.inspect(path).arrays["['big']"].chunk_crc32 == expected
    index = tmp_path / "tree.safetensors.index.json"
    inox_io.save(index, tree, max_shard_size=2**21)
    assert json.loads(json.loads(index.read_text())["metadata"]["inox_io"])["arrays"]["['big']"]["chunk_crc32"] == expected


def test_damaged_chunk_checksum_is_found_by_verify(tmp_path, fmt):
    r"""A chunk checksum that does not match, though the whole array's does: a load of
    slices would report damage, so ``verify`` does now."""

    tree = {"big": np.arange(2**19, dtype=np.float32)}
    path = tmp_path / f"tree.{fmt}"
    inox_io.save(path, tree)
    edit_manifest(path, lambda m: m["arrays"]["['big']"]["chunk_crc32"].__setitem__(1, "00000000"))
    with pytest.raises(CheckpointError, match=r"\['big'\]: checksum mismatch"):
        inox_io.verify(path)
    np.testing.assert_array_equal(inox_io.load(path, tree)["big"], tree["big"])  # whole: its own checksum


def test_files_without_chunk_checksums_still_load(tmp_path, fmt):
    r"""Format 1.0, as written before chunk checksums: the same file without them."""

    tree = {"big": np.arange(2**19, dtype=np.float32)}
    path = tmp_path / f"tree.{fmt}"
    inox_io.save(path, tree)

    def to_1_0(m):
        del m["minor_version"], m["chunk_crc32_bytes"], m["arrays"]["['big']"]["chunk_crc32"]

    edit_manifest(path, to_1_0)
    assert inox_io.verify(path).arrays["['big']"].chunk_crc32 is None
    np.testing.assert_array_equal(inox_io.load(path, tree)["big"], tree["big"])


def cut_points(path: Path, model) -> dict:
    size = path.stat().st_size
    begin, end = byte_range(path, model.l1.weight.value)
    return {
        "empty": 0,
        "4 bytes": 4,
        "8 bytes": 8,
        "in header": 40,
        "before data": begin,
        "in data": (begin + end) // 2,
        "last byte": size - 1,
    }


@pytest.mark.parametrize("where", ["empty", "4 bytes", "8 bytes", "in header", "before data", "in data", "last byte"])
def test_truncated_file(tmp_path, fmt, model, where):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    cut = cut_points(path, model)[where]
    with open(path, "r+b") as f:
        f.truncate(cut)

    with pytest.raises(CheckpointError, match="truncated"):
        inox_io.load(path, model)
    with pytest.raises(CheckpointError, match="truncated"):
        inox_io.inspect(path)


def test_trailing_array_truncated_names_it(tmp_path, fmt):
    path = tmp_path / f"t.{fmt}"
    inox_io.save(path, {"last": jnp.arange(100, dtype=jnp.int8)})
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)

    with pytest.raises(CheckpointError, match=r"truncated") as info:
        inox_io.load(path, {"last": jax.ShapeDtypeStruct((100,), jnp.int8)})
    if fmt == "safetensors":  # the header knows where the array ends
        assert "['last']" in str(info.value)


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a checkpoint at all" * 10)


MANIFEST_DAMAGE = {
    "unknown version": (lambda m: m.update(version=2), "unknown format version 2"),
    "version zero": (lambda m: m.update(version=0), "unknown format version 0"),
    "version as string": (lambda m: m.update(version="1"), "unknown format version '1'"),
    "version as float": (lambda m: m.update(version=1.0), "unknown format version 1.0"),
    "version as bool": (lambda m: m.update(version=True), "unknown format version True"),
    "no version": (lambda m: m.pop("version"), "unknown format version None"),
    "other format": (lambda m: m.update(format="orbax"), "format 'inox_io' expected"),
    "arrays not a map": (lambda m: m.update(arrays=[]), "field 'arrays'"),
    "ties not a list": (lambda m: m.update(ties={}), "field 'ties'"),
    "statics missing": (lambda m: m.pop("statics"), "field 'statics'"),
    "unknown dtype": (lambda m: m["arrays"][".l4.bias.value"].update(dtype="object"), r"\.l4\.bias\.value: manifest: unknown dtype"),
    "negative shape": (lambda m: m["arrays"][".l4.bias.value"].update(shape=[-8]), r"\.l4\.bias\.value: manifest: shape"),
    "boolean shape": (lambda m: m["arrays"][".l4.bias.value"].update(shape=[True]), r"\.l4\.bias\.value: manifest: shape"),
    "wrong nbytes": (lambda m: m["arrays"][".l4.bias.value"].update(nbytes=31), r"\.l4\.bias\.value: manifest: nbytes 31"),
    "bad crc": (lambda m: m["arrays"][".l4.bias.value"].update(crc32="xyz"), r"\.l4\.bias\.value: manifest: crc32"),
    "bad key impl": (lambda m: m["arrays"][".l4.bias.value"].update(key_impl="evil"), "unknown PRNG key implementation"),
    "bad tag": (lambda m: m["ties"][0].update(tag=[1, 2]), r"\.l1: manifest: tag \[1, 2\] is not a valid encoded tag"),
    "bool tag": (lambda m: m["ties"][0].update(tag=True), "tag True is not a valid encoded tag"),
    "tie without path": (lambda m: m["ties"][0].pop("path"), "scope and path strings expected"),
    "tie aliases not strings": (lambda m: m["ties"][0].update(aliases=[3]), "a list of alias paths expected"),
    "alias of nothing": (lambda m: m["aliases"].update({".x": ".nowhere"}), r"\.x: manifest: implicit alias of '\.nowhere'"),
    "minor version as string": (lambda m: m.update(minor_version="1"), "minor_version '1'"),
    "chunk size without minor version": (lambda m: m.update(chunk_crc32_bytes=2**20), "chunk_crc32_bytes 1048576"),
    "chunk size zero": (lambda m: m.update(minor_version=1, chunk_crc32_bytes=0), "chunk_crc32_bytes 0"),
    "chunk checksums of a one-chunk array": (
        lambda m: m.update(minor_version=1, chunk_crc32_bytes=2**20) or m["arrays"][".l4.bias.value"].update(chunk_crc32=["00000000"]),
        r"\.l4\.bias\.value: manifest: chunk_crc32: one checksum .* per chunk .*\(0\)",
    ),
    "array not listed in file": (
        lambda m: m["arrays"].update({".extra": {"dtype": "int8", "shape": [1], "nbytes": 1, "crc32": None}}),
        r"\.extra: listed in the manifest but not",
    ),
    "array dropped from manifest": (lambda m: m["arrays"].pop(".l4.bias.value"), r"\.l4\.bias\.value: (missing from the file|stored but not listed|in the safetensors header but not in the manifest)"),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_malformed_manifest(tmp_path, fmt, model, damage):
    edit, message = MANIFEST_DAMAGE[damage]
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    edit_manifest(path, edit)

    with pytest.raises(CheckpointError, match=message):
        inox_io.load(path, model)


def replace_manifest_text(path: Path, text: str) -> None:
    header, rest = read_header(path)
    holder = header["__metadata__"] if path.suffix == ".safetensors" else header
    holder["inox_io"] = text
    write_header(path, header, rest)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "inox_io", "format": "inox_io"}', "duplicate key"),
        ("[]", "format 'inox_io' expected"),
        ('{"a":' * 100 + "1" + "}" * 100, "nested deeper"),
        ('"inox_io"', "format 'inox_io' expected"),
    ],
)
def test_manifest_not_json(tmp_path, fmt, model, text, message):
    path = tmp_path / f"seed.{fmt}"
    inox_io.save(path, model)
    replace_manifest_text(path, text)

    with pytest.raises(CheckpointError, match=message):
        inox_io.inspect(path)


def test_garbage_file(tmp_path, fmt, model):
    path = tmp_path / f"seed.{fmt}"
    garbage(path)
    with pytest.raises(CheckpointError):
        inox_io.load(path, model)


SAFETENSORS_DAMAGE = {
    "huge header length": (lambda data: struct.pack("<Q", 2**62) + data[8:], "header length"),
    "header not json": (lambda data: data[:8] + b"}" + data[9:], "malformed safetensors header"),
    "header not an object": (lambda data: struct.pack("<Q", 2) + b"[]", "an object expected"),
}


@pytest.mark.parametrize("damage", sorted(SAFETENSORS_DAMAGE))
def test_malformed_safetensors_bytes(tmp_path, model, damage):
    edit, message = SAFETENSORS_DAMAGE[damage]
    path = tmp_path / "seed.safetensors"
    inox_io.save(path, model)
    path.write_bytes(edit(path.read_bytes()))

    with pytest.raises(CheckpointError, match=message):
        inox_io.inspect(path)


def entry(header, key="['w']"):
    return header[key]


SAFETENSORS_ENTRY_DAMAGE = {
    "shape not a list": lambda h: entry(h).update(shape=4),
    "shape of strings": lambda h: entry(h).update(shape=["4"]),
    "dtype not a string": lambda h: entry(h).update(dtype=["F32"]),
    "offsets not a pair": lambda h: entry(h).update(data_offsets=[0]),
    "offsets not a list": lambda h: entry(h).update(data_offsets=7),
    "negative offset": lambda h: entry(h).update(data_offsets=[-4, 12]),
    "entry not an object": lambda h: h.update({"['w']": "F32"}),
    "dtype disagrees with manifest": lambda h: entry(h).update(dtype="I32"),
    "shape disagrees with manifest": lambda h: entry(h).update(shape=[2, 2]),
    "offsets past the end": lambda h: entry(h).update(data_offsets=[32, 48]),
    "overlapping arrays": lambda h: entry(h, "['v']").update(data_offsets=[8, 16]),
    "metadata not strings": lambda h: h["__metadata__"].update(other=1),
}


@pytest.mark.parametrize("damage", sorted(SAFETENSORS_ENTRY_DAMAGE))
def test_malformed_safetensors_entry(tmp_path, damage):
    path = tmp_path / "t.safetensors"
    inox_io.save(path, {"w": jnp.arange(4.0), "v": jnp.arange(4.0) + 1})
    header, rest = read_header(path)
    SAFETENSORS_ENTRY_DAMAGE[damage](header)
    write_header(path, header, rest)

    with pytest.raises(CheckpointError):
        inox_io.inspect(path)


MSGPACK_DAMAGE = {
    "not a map": (lambda d: msgpack.packb([d["inox_io"]]), "a map expected at byte 0"),
    "first key": (lambda d: msgpack.packb({"other": d["inox_io"], "arrays": d["arrays"]}), "not an inox_io msgpack file"),
    "no arrays": (lambda d: msgpack.packb({"inox_io": d["inox_io"], "tensors": d["arrays"]}), "'arrays' expected"),
    "array not listed": (
        lambda d: msgpack.packb({"inox_io": d["inox_io"], "arrays": {**d["arrays"], ".x": b"1234"}}),
        r"\.x: stored but not listed",
    ),
    "array not binary": (
        lambda d: msgpack.packb({"inox_io": d["inox_io"], "arrays": {k: list(v) for k, v in d["arrays"].items()}}),
        "binary data expected",
    ),
    "array missing": (
        lambda d: msgpack.packb({"inox_io": d["inox_io"], "arrays": dict(list(d["arrays"].items())[1:])}),
        "listed in the manifest but not stored",
    ),
    "array too short": (
        lambda d: msgpack.packb({"inox_io": d["inox_io"], "arrays": {k: v[:-1] for k, v in d["arrays"].items()}}),
        "bytes stored",
    ),
}


@pytest.mark.parametrize("damage", sorted(MSGPACK_DAMAGE))
def test_malformed_msgpack(tmp_path, model, damage):
    edit, message = MSGPACK_DAMAGE[damage]
    path = tmp_path / "seed.msgpack"
    inox_io.save(path, model)
    path.write_bytes(edit(msgpack.unpackb(path.read_bytes())))

    with pytest.raises(CheckpointError, match=message):
        inox_io.inspect(path)


def test_foreign_safetensors_file_is_read(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(path))
    manifest = inox_io.inspect(path)

    assert manifest.arrays["w"].dtype == "float32"
    assert manifest.arrays["w"].crc32 is None and manifest.ties == []
    assert inox_io.verify(path) == manifest
    # Its keys are not key paths: a like names the position "['w']", which the file lacks.
    with pytest.raises(CheckpointError, match=r"\['w'\]: missing from the file"):
        inox_io.load(path, {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)})


# No pickle


def test_no_pickle_is_ever_called(tmp_path, monkeypatch, zoo):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    monkeypatch.setattr(np, "save", forbidden)

    for suffix in (".safetensors", ".msgpack"):
        path = tmp_path / f"zoo{suffix}"
        save_quietly(path, zoo)
        inox_io.inspect(path)
        inox_io.verify(path)
        assert_trees_bits_equal(inox_io.load(path, exact_like(zoo)), zoo)


def test_no_pickle_in_sources():
    root = Path(inox_io.__file__).parent
    unsafe = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"}
    found = []
    for file in sorted(root.rglob("*.py")):
        text = file.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found += [f"{file}: import {a.name}" for a in node.names if a.name.split(".")[0] in unsafe]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in unsafe:
                found.append(f"{file}: from {node.module}")
            elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                found.append(f"{file}: allow_pickle")
    assert not found, found


@pytest.mark.parametrize("suffix", [".safetensors", ".msgpack"])
def test_checksums_right_when_keys_and_metadata_hold_the_checksum_marker(tmp_path, suffix):
    # The final header patches the checksums into the placeholder header; a key or a
    # metadata value that looks like a checksum field must not receive one.
    marker = '"crc32":"00000000"'
    tree = {marker: jnp.arange(3.0), "b": jnp.ones(2)}
    path = tmp_path / f"m{suffix}"
    inox_io.save(path, tree, metadata={"crc32": "00000000", "note": marker})
    manifest = inox_io.verify(path)
    assert manifest.metadata == {"crc32": "00000000", "note": marker}
    assert all(info.crc32 != "00000000" for info in manifest.arrays.values())
    restored = inox_io.load(path, tree)
    assert all(np.array_equal(restored[k], tree[k]) for k in tree)


@pytest.mark.parametrize("suffix", [".safetensors", ".msgpack"])
def test_big_endian_numpy_arrays_are_stored_little_endian(tmp_path, suffix):
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    path = tmp_path / f"be{suffix}"
    manifest = inox_io.save(path, {"x": x})
    assert manifest.arrays["['x']"].dtype == "float32"
    restored = inox_io.load(path, {"x": jax.ShapeDtypeStruct((2, 3), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(restored["x"]), x.astype("<f4"))


def test_msgpack_key_damaged_in_place_is_caught_when_read(tmp_path):
    # Offsets come from the manifest, so the file is not walked when opened; the key
    # and bin header before each array are checked when the array is read.
    path = tmp_path / "k.msgpack"
    tree = {"ab": jnp.arange(4.0), "cd": jnp.ones(3)}
    inox_io.save(path, tree)
    data = path.read_bytes()
    at = data.rindex(b"['cd']")
    path.write_bytes(data[:at] + b"['ce']" + data[at + 6 :])

    assert list(inox_io.inspect(path).arrays) == ["['ab']", "['cd']"]  # the manifest is intact
    with pytest.raises(CheckpointError, match=r"\['cd'\]: the 9 bytes before the array"):
        inox_io.load(path, tree)
    with pytest.raises(CheckpointError, match=r"\['cd'\]: the 9 bytes before the array"):
        inox_io.verify(path)


def test_msgpack_trailing_bytes_refused(tmp_path):
    path = tmp_path / "t.msgpack"
    inox_io.save(path, {"a": jnp.ones(2)})
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(CheckpointError, match="1 bytes after the last array"):
        inox_io.inspect(path)


def test_default_device_placement_matches_device_put(monkeypatch):
    from inox_io.formats import transfer as base

    hosts = [np.arange(5, dtype=np.float32), np.ones((2, 3), ml_dtypes.bfloat16), np.zeros(0, np.int8)]
    expected = jax.device_put(hosts)
    for fast in (True, False):
        if not fast:  # a JAX without the internal batched transfer: the public path
            monkeypatch.setattr(base, "_batched_put", lambda *a, **k: 1 / 0)
        placed = base.device_put_default(hosts)
        for x, y in zip(placed, expected):
            assert (x.dtype, x.shape, x.sharding, x.committed) == (y.dtype, y.shape, y.sharding, y.committed)
            assert bits_equal(x, y)
    assert base._batched_put is None  # the failure turned the internal path off for good


def test_default_device_placement_follows_jax_default_device():
    from inox_io.formats import transfer as base

    device = jax.devices()[-1]
    with jax.default_device(device):
        (x,) = base.device_put_default([np.arange(3, dtype=np.float32)])
    assert x.devices() == {device} and not x.committed
