r"""PyTorch / Hugging Face interop without PyTorch: stored names, tied heads omitted or
aliased, transforms, and sharded ``*.safetensors.index.json`` checkpoints, against the
GPT-2-shaped fixtures of ``fixtures/hf`` (see ``make_hf_fixtures.py``)."""

import json
import runpy
import warnings

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import inox_io

from gpt2_model import GPT2, Config
from inox_io import CheckpointError, torch_names
from inox_io.formats import hf_index

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "hf"
SINGLE = FIXTURES / "gpt2-tiny" / "model.safetensors"
SHARDED = FIXTURES / "gpt2-tiny-sharded" / "model.safetensors.index.json"
CONFIG = Config.from_hf(json.loads((FIXTURES / "gpt2-tiny" / "config.json").read_text()))
IDS = np.array([3, 14, 15, 9, 26, 5, 35, 8])
HF = dict(names=torch_names, keep=["transformer.wte.weight"])  # as transformers writes


@pytest.fixture(scope="module")
def like():
    return inox_io.abstract(GPT2, CONFIG, key=jax.random.key(0))


@pytest.fixture(scope="module")
def hf_weights():
    return load_file(str(SINGLE))


def reference_forward(w, ids, config=CONFIG):
    r"""GPT-2 in NumPy (float64), straight from the Hugging Face arrays."""

    w = {k: v.astype(np.float64) for k, v in w.items()}
    E, H = config.n_embd, config.n_head

    def norm(x, p):
        y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + config.layer_norm_epsilon)
        return y * w[p + ".weight"] + w[p + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    L = len(ids)
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:L]
    for i in range(config.n_layer):
        h = f"transformer.h.{i}"
        qkv = norm(x, h + ".ln_1") @ w[h + ".attn.c_attn.weight"] + w[h + ".attn.c_attn.bias"]
        q, k, v = (y.reshape(L, H, E // H).transpose(1, 0, 2) for y in np.split(qkv, 3, axis=-1))
        a = np.where(np.tril(np.ones((L, L), bool)), q @ k.transpose(0, 2, 1) / np.sqrt(E // H), -np.inf)
        a = np.exp(a - a.max(-1, keepdims=True))
        y = ((a / a.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(L, E)
        x = x + y @ w[h + ".attn.c_proj.weight"] + w[h + ".attn.c_proj.bias"]
        m = gelu(norm(x, h + ".ln_2") @ w[h + ".mlp.c_fc.weight"] + w[h + ".mlp.c_fc.bias"])
        x = x + m @ w[h + ".mlp.c_proj.weight"] + w[h + ".mlp.c_proj.bias"]
    return norm(x, "transformer.ln_f") @ w["transformer.wte.weight"].T


def check_model(model, weights):
    assert model.lm_head is model.transformer.wte  # the tie, restored
    np.testing.assert_allclose(model(jnp.asarray(IDS)), reference_forward(weights, IDS), rtol=1e-4, atol=1e-4)


def stored(path):
    r"""{key: array} and __metadata__ of a plain safetensors file."""

    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


# Names


def test_torch_names():
    assert torch_names(".transformer.h[0].attn.c_attn.weight.value") == "transformer.h.0.attn.c_attn.weight"
    assert torch_names(".l3.weight.value.value") == "l3.weight"
    assert torch_names("['a']") == "a"
    assert torch_names("['layers'][2]['w']") == "layers.2.w"
    with pytest.raises(ValueError, match="not a key path"):
        torch_names(".a..b")


def test_name_collision_names_both_paths(tmp_path):
    tree = {"a": {"b": jnp.ones(2)}, "a.b": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"\['a'\]\['b'\] and \['a.b'\]|\['a.b'\] and \['a'\]\['b'\]"):
        inox_io.save(tmp_path / "x.safetensors", tree, names=torch_names)
    assert not (tmp_path / "x.safetensors").exists()


def test_keep(tmp_path, like, hf_weights):
    model = inox_io.load(SINGLE, like, names=torch_names)

    # By default, the name of the preserved occurrence ('lm_head' sorts first).
    inox_io.save(tmp_path / "a.safetensors", model, names=torch_names)
    arrays, metadata = stored(tmp_path / "a.safetensors")
    assert "lm_head.weight" in arrays and "transformer.wte.weight" not in arrays
    assert metadata["transformer.wte.weight"] == "lm_head.weight"

    inox_io.save(tmp_path / "b.safetensors", model, names=torch_names, keep=max)
    assert set(stored(tmp_path / "b.safetensors")[0]) == set(hf_weights)

    with pytest.raises(ValueError, match="keep returned 'nope'"):
        inox_io.save(tmp_path / "c.safetensors", model, names=torch_names, keep=lambda names: "nope")
    with pytest.raises(ValueError, match="pass names too"):
        inox_io.save(tmp_path / "c.safetensors", model, keep=["transformer.wte.weight"])

    # Whichever name was kept, the tie is found.
    check_model(inox_io.load(tmp_path / "a.safetensors", like, names=torch_names), hf_weights)


# Hugging Face files: head omitted, both names, aliases, extra buffers


@pytest.mark.parametrize("path", [SINGLE, SHARDED], ids=["single", "sharded"])
def test_hf_file_without_head_loads_tied(path, like, hf_weights):
    assert "lm_head.weight" not in inox_io.inspect(path).arrays
    model = inox_io.load(path, like, names=torch_names)
    check_model(model, hf_weights)
    np.testing.assert_array_equal(model.lm_head.weight(), hf_weights["transformer.wte.weight"])


def test_file_storing_both_names(tmp_path, like, hf_weights):
    both = {**hf_weights, "lm_head.weight": hf_weights["transformer.wte.weight"].copy()}
    save_file(both, str(tmp_path / "equal.safetensors"))
    check_model(inox_io.load(tmp_path / "equal.safetensors", like, names=torch_names), hf_weights)

    both["lm_head.weight"] = both["lm_head.weight"] + 1
    save_file(both, str(tmp_path / "differ.safetensors"))
    with pytest.raises(CheckpointError, match="holds lm_head.weight and transformer.wte.weight with different values"):
        inox_io.load(tmp_path / "differ.safetensors", like, names=torch_names)
    with pytest.warns(UserWarning, match="different values"):
        model = inox_io.load(tmp_path / "differ.safetensors", like, names=torch_names, strict=False)
    assert model.lm_head is model.transformer.wte


def test_save_model_style_aliases(tmp_path, like, hf_weights):
    # safetensors.torch.save_model keeps the first name in sorted order and records the other.
    kept = {("lm_head.weight" if k == "transformer.wte.weight" else k): v for k, v in hf_weights.items()}
    metadata = {"format": "pt", "transformer.wte.weight": "lm_head.weight"}
    save_file(kept, str(tmp_path / "aliased.safetensors"), metadata=metadata)
    check_model(inox_io.load(tmp_path / "aliased.safetensors", like, names=torch_names), hf_weights)


def test_unexpected_and_missing(tmp_path, like, hf_weights):
    extra = {**hf_weights, "transformer.h.0.attn.bias": np.tril(np.ones((1, 1, 16, 16), np.float32))}
    del extra["transformer.ln_f.bias"]
    save_file(extra, str(tmp_path / "old.safetensors"))
    with pytest.raises(CheckpointError) as error:
        inox_io.load(tmp_path / "old.safetensors", like, names=torch_names)
    assert "transformer.h.0.attn.bias: in the file but not in like" in str(error.value)
    assert "missing from the file (as 'transformer.ln_f.bias')" in str(error.value)

    with pytest.warns(UserWarning, match="loaded partially"):
        model = inox_io.load(tmp_path / "old.safetensors", like, names=torch_names, strict=False)
    assert isinstance(model.transformer.ln_f.bias.value, jax.ShapeDtypeStruct)  # kept from like
    assert model.lm_head is model.transformer.wte


def test_shape_mismatch(tmp_path, like, hf_weights):
    bad = {**hf_weights, "transformer.wpe.weight": np.zeros((8, 16), np.float32)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"float32\[16, 16\] expected, float32\[8, 16\] found"):
        inox_io.load(tmp_path / "bad.safetensors", like, names=torch_names)


# Export, re-import


@pytest.mark.parametrize("kind", ["single", "sharded"])
def test_export_reimport(tmp_path, kind, like, hf_weights):
    model = inox_io.load(SINGLE, like, names=torch_names)
    if kind == "single":
        path = tmp_path / "model.safetensors"
        inox_io.save(path, model, metadata={"format": "pt"}, **HF)
        arrays, metadata = stored(path)
        assert metadata["lm_head.weight"] == "transformer.wte.weight" and metadata["format"] == "pt"
    else:
        path = tmp_path / "model.safetensors.index.json"
        inox_io.save(path, model, metadata={"format": "pt"}, max_shard_size="12KiB", **HF)
        index = json.loads(path.read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 2 and index["metadata"]["total_size"] == sum(x.nbytes for x in hf_weights.values())
        arrays, aliases = {}, {}
        for name in shards:
            part, metadata = stored(tmp_path / name)
            assert metadata["format"] == "pt" and sum(x.nbytes for x in part.values()) <= 12 * 1024
            assert all(index["weight_map"][k] == name for k in part)
            arrays.update(part)
            aliases.update({k: v for k, v in metadata.items() if k != "format"})
        assert aliases == {"lm_head.weight": "transformer.wte.weight"}

    # Exactly the Hugging Face file: same names, same arrays, head omitted.
    assert set(arrays) == set(hf_weights)
    for name, x in hf_weights.items():
        np.testing.assert_array_equal(arrays[name], x)

    check_model(inox_io.load(path, like, names=torch_names), hf_weights)
    assert inox_io.verify(path).aliases == {"lm_head.weight": "transformer.wte.weight"}


def test_transforms(tmp_path, like, hf_weights):
    model = inox_io.load(SINGLE, like, names=torch_names)

    def numpy_only(x):  # cannot be traced by JAX: computed once to learn its shape
        return np.ascontiguousarray(np.asarray(x).T)

    transforms = {
        "*.c_fc.weight": inox_io.TRANSPOSE,
        (lambda name: name.endswith("attn.c_proj.weight")): (numpy_only, numpy_only),
    }
    path = tmp_path / "t.safetensors"
    inox_io.save(path, model, transforms=transforms, **HF)
    arrays, _ = stored(path)
    assert arrays["transformer.h.1.mlp.c_fc.weight"].shape == (64, 16)  # PyTorch's (out, in)
    np.testing.assert_array_equal(arrays["transformer.h.0.attn.c_proj.weight"], hf_weights["transformer.h.0.attn.c_proj.weight"].T)
    np.testing.assert_array_equal(arrays["transformer.h.0.mlp.c_proj.weight"], hf_weights["transformer.h.0.mlp.c_proj.weight"])

    check_model(inox_io.load(path, like, names=torch_names, transforms=transforms), hf_weights)
    with pytest.raises(CheckpointError, match=r"float32\[16, 64\] expected, float32\[64, 16\] found"):
        inox_io.load(path, like, names=torch_names)

    # Without names, transforms go by key path.
    inox_io.save(tmp_path / "p.safetensors", model, transforms={"*c_fc.weight*": inox_io.TRANSPOSE})
    back = inox_io.load(tmp_path / "p.safetensors", like, transforms={"*c_fc.weight*": inox_io.TRANSPOSE})
    check_model(back, hf_weights)


# Sharded indices


def test_sharded_without_names_keeps_ties(tmp_path, like, hf_weights):
    model = inox_io.load(SHARDED, like, names=torch_names)
    path = tmp_path / "ckpt.safetensors.index.json"
    inox_io.save(path, model, max_shard_size=10_000)
    manifest = inox_io.inspect(path)
    assert [t.aliases for t in manifest.ties] == [[".transformer.wte"]]
    check_model(inox_io.load(path, like), hf_weights)


def test_sharded_load_onto_shardings(like, hf_weights):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("x",))

    def shardings(path, leaf):
        spec = ("x",) if len(leaf.shape) == 2 and leaf.shape[0] % 2 == 0 else ()
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

    model = inox_io.load(SHARDED, like, names=torch_names, shardings=shardings)
    fc = model.transformer.h[1].mlp.c_fc.weight.value
    assert fc.sharding.spec == jax.sharding.PartitionSpec("x") and len(fc.addressable_shards) == 2
    assert model.lm_head.weight.value.sharding.spec == jax.sharding.PartitionSpec("x")
    check_model(model, hf_weights)


def test_sharded_write_is_atomic(tmp_path, like, monkeypatch):
    model = inox_io.load(SINGLE, like, names=torch_names)
    path = tmp_path / "model.safetensors.index.json"
    inox_io.save(path, model, max_shard_size=12_000, **HF)
    first = sorted(p.name for p in tmp_path.iterdir())

    real = hf_index.write_payload_file
    calls = []

    def failing(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_index, "write_payload_file", failing)
    with pytest.raises(OSError, match="disk full"):
        inox_io.save(path, model, max_shard_size=12_000, overwrite=True, **HF)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == first  # the old checkpoint, whole
    assert "-of-" in calls[0].name and calls[0].name not in first  # new shards never overwrite old ones
    inox_io.load(path, like, names=torch_names)

    with pytest.raises(FileExistsError):
        inox_io.save(path, model, **HF)
    inox_io.save(path, model, max_shard_size=20_000, overwrite=True, **HF)
    now = sorted(p.name for p in tmp_path.iterdir())
    assert not set(now) & set(first) - {path.name}  # old shards removed
    assert len(now) == 1 + len(set(json.loads(path.read_text())["weight_map"].values()))
    inox_io.load(path, like, names=torch_names)


def test_index_errors(tmp_path, like):
    path = tmp_path / "x.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": {"a": "../model.safetensors"}}))
    with pytest.raises(CheckpointError, match="a file name beside the index expected"):
        inox_io.inspect(path)
    path.write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard gone.safetensors is missing"):
        inox_io.inspect(path)
    with pytest.raises(ValueError, match="max_shard_size is for sharded checkpoints"):
        inox_io.save(tmp_path / "y.safetensors", {"a": jnp.ones(2)}, max_shard_size="1GB")
    with pytest.raises(ValueError, match="a size such as"):
        inox_io.save(path, {"a": jnp.ones(2)}, max_shard_size="lots", overwrite=True)


# Other routes


def test_msgpack_and_convert(tmp_path, like, hf_weights):
    model = inox_io.load(SINGLE, like, names=torch_names)
    inox_io.save(tmp_path / "m.msgpack", model, **HF)
    check_model(inox_io.load(tmp_path / "m.msgpack", like, names=torch_names), hf_weights)

    # A file saved with key paths, renamed by convert (as `inox-io convert --names torch`).
    inox_io.save(tmp_path / "plain.msgpack", model)
    check_model(inox_io.load(tmp_path / "plain.msgpack", like, names=torch_names), hf_weights)
    inox_io.convert(tmp_path / "plain.msgpack", tmp_path / "c.safetensors", **HF)
    arrays, metadata = stored(tmp_path / "c.safetensors")
    assert set(arrays) == set(hf_weights) and metadata["lm_head.weight"] == "transformer.wte.weight"
    check_model(inox_io.load(tmp_path / "c.safetensors", like, names=torch_names), hf_weights)


def test_generator_reproduces_fixtures(tmp_path):
    runpy.run_path(str(FIXTURES / "make_hf_fixtures.py"), run_name="fixtures").get("main")(tmp_path)
    for made in tmp_path.rglob("*"):
        if made.is_file():
            assert made.read_bytes() == (FIXTURES / made.relative_to(tmp_path)).read_bytes(), made


def test_cli_convert_names_torch(tmp_path, like, hf_weights, capsys):
    from inox_io.cli import main

    inox_io.save(tmp_path / "plain.safetensors", inox_io.load(SINGLE, like, names=torch_names))
    dst = tmp_path / "hf.safetensors"
    assert main(["convert", str(tmp_path / "plain.safetensors"), str(dst), "--names", "torch", "--keep", "transformer.wte.weight"]) == 0
    assert "1 shared name dropped" in capsys.readouterr().out
    arrays, metadata = stored(dst)
    assert set(arrays) == set(hf_weights) and metadata["lm_head.weight"] == "transformer.wte.weight"
    assert main(["convert", str(tmp_path / "plain.safetensors"), str(tmp_path / "x.safetensors"), "--keep", "a"]) == 1
    assert "pass names too" in capsys.readouterr().err


@pytest.mark.parametrize("dst", ["e.msgpack", "e.safetensors.index.json"])
def test_named_exports_keep_the_declared_ties(tmp_path, dst):
    from models import WeightSharingMLP

    path = tmp_path / "e.safetensors"
    model = WeightSharingMLP(jax.random.key(0), features=4)
    inox_io.save(path, model, names=torch_names)

    for manifest in (inox_io.inspect(path), inox_io.convert(path, tmp_path / dst), inox_io.inspect(tmp_path / dst)):
        assert [(t.tag, t.path, t.aliases) for t in manifest.named_ties] == [("l1", ".l1", [".l2"]), ("l3.weight", ".l3.weight", [".l4.weight"])]
        assert manifest.ties == [] and manifest.aliases["l4.weight"] == "l3.weight"
    restored = inox_io.load(path, WeightSharingMLP(jax.random.key(1), features=4), names=torch_names)
    assert restored.l1 is restored.l2 and restored.l3.weight is restored.l4.weight


def test_torch_save_model_alias_map_gives_one_array():
    r"""A file of torch's ``save_model`` (fixtures/torch): its alias map is a tie."""

    path = ROOT / "fixtures" / "torch" / "tied.safetensors"
    manifest = inox_io.inspect(path)
    assert manifest.aliases == {"wte.weight": "lm_head.weight"} and manifest.metadata == {"wte.weight": "lm_head.weight"}

    flat = inox_io.load(path)
    assert sorted(flat) == ["lm_head.weight", "ln.bias", "ln.weight", "wte.weight"]
    assert flat["wte.weight"] is flat["lm_head.weight"]
    expected = np.arange(48, dtype=np.float32).reshape(12, 4) / 8
    np.testing.assert_array_equal(np.asarray(flat["wte.weight"]), expected)

    shared = jnp.zeros((12, 4))
    like = {"wte": {"weight": shared}, "lm_head": {"weight": shared}, "ln": {"weight": jnp.zeros(4), "bias": jnp.zeros(4)}}
    restored = inox_io.load(path, like, names=torch_names)
    assert restored["wte"]["weight"] is restored["lm_head"]["weight"]
    np.testing.assert_array_equal(np.asarray(restored["lm_head"]["weight"]), expected)
