r"""The golden checkpoints of ``fixtures/`` (format v1) stay readable, bit for bit.

Each fixture is loaded into an :func:`inox_io.abstract` like and compared with its model
rebuilt by ``fixtures/make_fixtures.py``; its manifest is compared with what v1 says it
holds. A failure here means that files written by an earlier version no longer read
the same: fix the reader, never the fixtures.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zlib

from pathlib import Path

import jax
import msgpack
import numpy as np
import pytest
from safetensors import safe_open

import inox_io
from inox_io import TieInfo

from models import SEED_KEY, WeightSharingMLP, assert_trees_bits_equal, bits_equal, dtype_zoo, seed_model, x64_arrays

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"


def _import_make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_fixtures = _import_make_fixtures()
CASES = [(model, fmt) for model in make_fixtures.MODELS for fmt in make_fixtures.FORMATS]
SEED_CASES = [fmt for model, fmt in CASES if model == "seed"]
DTYPE_CASES = [fmt for model, fmt in CASES if model == "dtypes"]

SEED_KEYS = [
    ".l1.value.bias.value",
    ".l1.value.weight.value",
    ".l3.bias.value",
    ".l3.weight.value.value",
    ".l4.bias.value",
]


def fixture(model: str, fmt: str) -> Path:
    return make_fixtures.fixture_path(FIXTURES, model, fmt)


def crc32(x) -> str:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return f"{zlib.crc32(np.ascontiguousarray(np.asarray(x)).tobytes()):08x}"


def raw_manifest(path: Path) -> dict:
    r"""The manifest JSON as stored, read with the plain libraries."""

    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="numpy") as f:
            return json.loads(f.metadata()["inox_io"])
    with open(path, "rb") as f:
        return json.loads(msgpack.unpackb(f.read())["inox_io"])


def dtype_zoo_like():
    r"""An abstract like of the dtype zoo; without x64, the 64-bit leaves are given
    their exact dtypes by hand (JAX would narrow them)."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # narrowing float64 extremes to float32
        like = inox_io.abstract(dtype_zoo)
    like.x64 = {k: jax.ShapeDtypeStruct(x.shape, x.dtype) for k, x in x64_arrays().items()}
    return like


@pytest.mark.parametrize("model, fmt", CASES)
def test_fixture_is_committed_and_intact(model, fmt):
    path = fixture(model, fmt)
    assert path.exists(), f"{path} missing: run python fixtures/make_fixtures.py"
    manifest = inox_io.verify(path)
    assert (manifest.format, manifest.version) == ("inox_io", 1)
    assert manifest.metadata == make_fixtures.fixture_metadata(model, fmt)
    assert {"inox_io", "inox", "jax", "numpy", "python"} <= set(manifest.libraries)


# The seed model


@pytest.mark.parametrize("fmt", SEED_CASES)
def test_seed_fixture_loads(fmt):
    expected = seed_model()
    restored = inox_io.load(fixture("seed", fmt), inox_io.abstract(WeightSharingMLP, jax.random.key(SEED_KEY)))

    assert restored.l1 is restored.l2
    assert restored.l3.weight is restored.l4.weight
    assert restored.l3.weight.value is restored.l4.weight.value
    assert_trees_bits_equal(restored, expected)
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    assert bits_equal(restored(x), expected(x))


@pytest.mark.parametrize("fmt", SEED_CASES)
def test_seed_fixture_manifest(fmt):
    manifest = inox_io.inspect(fixture("seed", fmt))
    model = seed_model()
    stored = {
        ".l1.value.bias.value": model.l1.bias.value,
        ".l1.value.weight.value": model.l1.weight.value,
        ".l3.bias.value": model.l3.bias.value,
        ".l3.weight.value.value": model.l3.weight.value.value,
        ".l4.bias.value": model.l4.bias.value,
    }

    assert list(manifest.arrays) == SEED_KEYS
    for key, x in stored.items():
        info = manifest.arrays[key]
        assert (info.dtype, info.shape, info.nbytes, info.key_impl) == ("float32", x.shape, x.size * 4, None), key
        assert info.crc32 == crc32(x), key
    assert [info.shape for info in manifest.arrays.values()] == [(64,), (64, 64), (64,), (64, 64), (64,)]
    assert manifest.ties == [
        TieInfo(scope="", tag="l1", path=".l1", aliases=[".l2"]),
        TieInfo(scope="", tag="l3.weight", path=".l3.weight", aliases=[".l4.weight"]),
    ]
    assert manifest.aliases == {} and manifest.statics == {}

    raw = raw_manifest(fixture("seed", fmt))
    assert list(raw) == ["format", "version", "libraries", "arrays", "ties", "aliases", "statics", "metadata"]
    assert raw["ties"] == [
        {"scope": "", "tag": "l1", "path": ".l1", "aliases": [".l2"]},
        {"scope": "", "tag": "l3.weight", "path": ".l3.weight", "aliases": [".l4.weight"]},
    ]


def test_seed_safetensors_plain_read():
    from safetensors.flax import load_file

    path = fixture("seed", "safetensors")
    tensors = load_file(str(path))
    model = seed_model()

    assert sorted(tensors) == SEED_KEYS  # l2 and l4.weight are not stored
    assert bits_equal(tensors[".l1.value.weight.value"], model.l1.weight.value)
    assert bits_equal(tensors[".l3.weight.value.value"], model.l3.weight.value.value)
    assert bits_equal(tensors[".l4.bias.value"], model.l4.bias.value)
    with safe_open(str(path), framework="flax") as f:
        assert sorted(f.keys()) == SEED_KEYS
        assert list(f.metadata()) == ["inox_io"]


def test_seed_msgpack_plain_read():
    with open(fixture("seed", "msgpack"), "rb") as f:
        data = msgpack.unpackb(f.read())
    model = seed_model()

    assert list(data) == ["inox_io", "arrays"]
    assert list(data["arrays"]) == SEED_KEYS
    assert data["arrays"][".l3.weight.value.value"] == np.asarray(model.l3.weight.value.value).tobytes()


# The dtype zoo


@pytest.mark.parametrize("fmt", DTYPE_CASES)
def test_dtype_fixture_loads(fmt):
    zoo = dtype_zoo()
    restored = inox_io.load(fixture("dtypes", fmt), dtype_zoo_like())

    assert_trees_bits_equal(restored, zoo)
    assert restored.first is restored.second
    assert restored.lucky[0] is restored.lucky[1]
    assert restored.x32["again"] is restored.x32["float32"]  # the implicit alias
    for name, x in restored.x64.items():
        assert type(x) is np.ndarray, name  # exact, not narrowed by JAX
    for name in ("threefry", "rbg", "unsafe_rbg"):
        assert jax.random.key_impl(restored.keys[name]) == jax.random.key_impl(zoo.keys[name])


@pytest.mark.parametrize("fmt", DTYPE_CASES)
def test_dtype_fixture_manifest(fmt):
    manifest = inox_io.inspect(fixture("dtypes", fmt))
    zoo = dtype_zoo()

    expected = {f".x32['{name}']": x for name, x in zoo.x32.items() if name != "float32"}  # float32 is the alias
    expected.update({f".x64['{name}']": x for name, x in zoo.x64.items()})
    expected.update({f".keys['{name}']": x for name, x in zoo.keys.items()})
    expected[".first.value.value"] = zoo.first.value.value
    expected[".lucky[0].value.value"] = zoo.lucky[0].value.value

    assert sorted(manifest.arrays) == sorted(expected)
    for key, x in expected.items():
        info = manifest.arrays[key]
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert (info.dtype, info.key_impl) == (str(x.dtype), str(jax.random.key_impl(x))), key
            assert info.nbytes == jax.random.key_data(x).nbytes, key
        else:
            assert (info.dtype, info.nbytes) == (np.dtype(x.dtype).name, x.nbytes), key
        assert info.shape == x.shape, key
        assert info.crc32 == crc32(x), key

    assert [(t.scope, t.tag, t.path, t.aliases) for t in manifest.ties] == [
        ("", ("block", 0), ".first", [".second"]),
        ("", 7, ".lucky[0]", [".lucky[1]"]),
    ]
    assert manifest.aliases == {".x32['float32']": ".x32['again']"}
    assert manifest.statics == {".depth": 3, ".flag": True, ".name": "dtype-zoo", ".ratio": 0.5}

    raw = raw_manifest(fixture("dtypes", fmt))
    assert [t["tag"] for t in raw["ties"]] == [{"tuple": ["block", 0]}, 7]  # how v1 encodes tags


def test_dtype_fixture_safetensors_plain_keys():
    manifest = inox_io.inspect(fixture("dtypes", "safetensors"))
    with safe_open(str(fixture("dtypes", "safetensors")), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(manifest.arrays)


X64_SCRIPT = textwrap.dedent(
    r"""
    import sys, jax, numpy as np
    assert jax.config.jax_enable_x64
    sys.path.insert(0, sys.argv[1])
    import inox_io
    from models import dtype_zoo, assert_trees_bits_equal
    zoo = dtype_zoo()
    for path in sys.argv[2:]:
        restored = inox_io.load(path, inox_io.abstract(dtype_zoo))
        assert_trees_bits_equal(restored, zoo)
        for name, x in restored.x64.items():
            assert isinstance(x, jax.Array) and x.dtype == zoo.x64[name].dtype, (path, name, type(x))
        assert restored.first is restored.second and restored.lucky[0] is restored.lucky[1]
        print("ok", path)
    """
)


def test_dtype_fixture_with_x64():
    paths = [str(fixture("dtypes", fmt)) for fmt in DTYPE_CASES]
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", X64_SCRIPT, str(Path(__file__).parent), *paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("ok ") == len(paths)


# The generator


def test_generator_reproduces_fixtures(tmp_path):
    paths = make_fixtures.make(tmp_path)

    assert sorted(p.name for p in paths) == sorted(fixture(m, f).name for m, f in CASES)
    for (model, fmt), path in zip(CASES, paths):
        made, committed = inox_io.inspect(path), inox_io.inspect(fixture(model, fmt))
        made.libraries = committed.libraries = {}  # versions of the day
        assert made == committed, (model, fmt)


def test_generator_keeps_existing_fixtures(tmp_path):
    one = {"seed": seed_model}
    (path,) = make_fixtures.make(tmp_path, models=one, formats={"msgpack": ".msgpack"})
    path.write_bytes(b"kept")

    assert make_fixtures.make(tmp_path, models=one, formats={"msgpack": ".msgpack"}) == []
    assert path.read_bytes() == b"kept"
    assert make_fixtures.make(tmp_path, models=one, formats={"msgpack": ".msgpack"}, overwrite=True) == [path]
    assert inox_io.inspect(path).arrays == inox_io.inspect(fixture("seed", "msgpack")).arrays
