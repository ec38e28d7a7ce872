r"""JAX -> safetensors -> PyTorch -> safetensors -> JAX, for a GPT-2-shaped model whose
head is tied to its embedding on both sides. Skipped without PyTorch
(``pip install inox-io[torch]``)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ImportError)  # a broken install skips too

from safetensors.torch import load_file, load_model, save_file, save_model  # noqa: E402

import inox_io  # noqa: E402

from gpt2_model import GPT2, Config  # noqa: E402
from inox_io import torch_names  # noqa: E402

CONFIG = Config()
IDS = [3, 14, 15, 9, 26, 5, 35, 8]

#: torch.nn.Linear stores (out, in), inox.nn.Linear (in, out).
TRANSPOSED = {(lambda name: name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))): inox_io.TRANSPOSE}
TO_TORCH = dict(names=torch_names, keep=["transformer.wte.weight"], transforms=TRANSPOSED)
FROM_TORCH = dict(names=torch_names, transforms=TRANSPOSED)


class Attention(torch.nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.heads = c.n_head
        self.c_attn = torch.nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = torch.nn.Linear(c.n_embd, c.n_embd)

    def forward(self, x):
        L, E = x.shape
        q, k, v = (y.view(L, self.heads, -1).transpose(0, 1) for y in self.c_attn(x).split(E, dim=-1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(0, 1).reshape(L, E))


class Block(torch.nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.attn = Attention(c)
        self.ln_2 = torch.nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.mlp = torch.nn.Module()
        self.mlp.c_fc = torch.nn.Linear(c.n_embd, 4 * c.n_embd)
        self.mlp.c_proj = torch.nn.Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        m = torch.nn.functional.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh")
        return x + self.mlp.c_proj(m)


class TorchGPT2(torch.nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.transformer = torch.nn.Module()
        self.transformer.wte = torch.nn.Embedding(c.vocab_size, c.n_embd)
        self.transformer.wpe = torch.nn.Embedding(c.n_positions, c.n_embd)
        self.transformer.h = torch.nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.transformer.ln_f = torch.nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.lm_head = torch.nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied

    def forward(self, ids):
        t = self.transformer
        x = t.wte(ids) + t.wpe(torch.arange(ids.shape[-1]))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


def torch_out(model):
    with torch.no_grad():
        return model(torch.tensor(IDS)).numpy()


def jax_out(model):
    return np.asarray(model(jnp.asarray(IDS)))


def assert_tied(model):
    if isinstance(model, TorchGPT2):
        assert model.lm_head.weight is model.transformer.wte.weight
    else:
        assert model.lm_head is model.transformer.wte


def test_jax_to_torch_and_back(tmp_path):
    model = GPT2(CONFIG, key=jax.random.key(1))
    inox_io.save(tmp_path / "jax.safetensors", model, metadata={"format": "pt"}, **TO_TORCH)

    tm = TorchGPT2(CONFIG)
    missing, unexpected = load_model(tm, tmp_path / "jax.safetensors")  # strict
    assert (missing, unexpected) == (set(), [])
    assert_tied(tm)
    np.testing.assert_allclose(torch_out(tm), jax_out(model), rtol=1e-4, atol=1e-5)

    # Train a little on the PyTorch side (the tie holds), save as PyTorch does, come back.
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert_tied(tm)
    save_model(tm, str(tmp_path / "torch.safetensors"))  # keeps 'lm_head.weight', aliases the other
    back = inox_io.load(tmp_path / "torch.safetensors", model, **FROM_TORCH)
    assert_tied(back)
    np.testing.assert_allclose(jax_out(back), torch_out(tm), rtol=1e-4, atol=1e-5)
    assert not np.allclose(jax_out(back), jax_out(model), atol=1e-4)  # the PyTorch update came along


def test_torch_state_dict_with_both_names(tmp_path):
    tm = TorchGPT2(CONFIG)
    save_file({k: v.clone() for k, v in tm.state_dict().items()}, str(tmp_path / "both.safetensors"))
    like = inox_io.abstract(GPT2, CONFIG, key=jax.random.key(0))
    back = inox_io.load(tmp_path / "both.safetensors", like, **FROM_TORCH)
    assert_tied(back)
    np.testing.assert_allclose(jax_out(back), torch_out(tm), rtol=1e-4, atol=1e-5)


def test_sharded_both_ways(tmp_path):
    model = GPT2(CONFIG, key=jax.random.key(2))
    inox_io.save(tmp_path / "model.safetensors.index.json", model, max_shard_size="10KB", **TO_TORCH)

    # PyTorch reads the shards of the weight map, as transformers does.
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(tmp_path / shard))
    tm = TorchGPT2(CONFIG)
    missing, unexpected = tm.load_state_dict(state, strict=False)
    assert (missing, unexpected) == (["lm_head.weight"], [])  # tied: filled by wte
    assert_tied(tm)
    np.testing.assert_allclose(torch_out(tm), jax_out(model), rtol=1e-4, atol=1e-5)

    # And PyTorch writes shards of its own, head omitted, that inox_io reads.
    tm = TorchGPT2(CONFIG)
    state = {k: v for k, v in tm.state_dict().items() if k != "lm_head.weight"}
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        save_file({k: state[k] for k in part}, str(tmp_path / f"t-{i:05d}-of-00002.safetensors"), metadata={"format": "pt"})
        weight_map.update({k: f"t-{i:05d}-of-00002.safetensors" for k in part})
    (tmp_path / "t.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    back = inox_io.load(tmp_path / "t.safetensors.index.json", model, **FROM_TORCH)
    assert_tied(back)
    np.testing.assert_allclose(jax_out(back), torch_out(tm), rtol=1e-4, atol=1e-5)
