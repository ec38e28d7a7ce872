r"""Main job: train a tied model a few steps, save it, inspect the file, restore it into
an abstract ``like``, and check that the ties and the values came back.

    python examples/save_restore.py [--dir DIRECTORY]
"""

import argparse
import jax
import jax.numpy as jnp
import optax
import tempfile

from pathlib import Path

import inox
import inox.nn as nn
import inox_io


class TiedMLP(nn.Scope):
    r"""The spec's weight-sharing MLP: l2 is l1, and l4's weight is l3's."""

    def __init__(self, key, features: int = 64):
        keys = jax.random.split(key, 3)
        self.l1 = nn.Reference("l1", nn.Linear(features, features, key=keys[0]))
        self.l2 = self.l1
        self.l3 = nn.Linear(features, features, key=keys[1])
        self.l4 = nn.Linear(features, features, key=keys[2])
        self.l3.weight = nn.Reference("l3.weight", self.l3.weight)
        self.l4.weight = self.l3.weight
        self.relu = nn.ReLU()

    def __call__(self, x):
        x = self.l2(self.relu(self.l1(x)))
        return self.l4(self.relu(self.l3(self.relu(x))))


def train(model: TiedMLP, steps: int = 20) -> TiedMLP:
    modef, params, others = model.partition(nn.Parameter)
    optimizer = optax.adamw(1e-3)
    state = optimizer.init(params)
    x = jax.random.normal(jax.random.key(1), (32, 64))
    y = jnp.sin(x)

    @jax.jit
    def step(params, state):
        def loss(params):
            return jnp.mean((modef(params, others)(x) - y) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    for i in range(steps):
        params, state, value = step(params, state)
    print(f"trained {steps} steps, loss {float(value):.4f}")
    return modef(params, others)


def main(directory: Path) -> None:
    model = train(TiedMLP(jax.random.key(0)))
    assert model.l1 is model.l2 and model.l3.weight is model.l4.weight

    for name in ("model.safetensors", "model.msgpack"):
        path = directory / name
        inox_io.save(path, model, metadata={"steps": "20"}, overwrite=True)
        manifest = inox_io.inspect(path)
        print(f"saved {path.name}: {len(manifest.arrays)} arrays, {manifest.nbytes} bytes "
              f"({manifest.saved_bytes()} bytes saved by sharing)")
        for tie in manifest.ties:
            print(f"  tag {tie.tag!r}: {tie.path} <- {', '.join(tie.aliases)}")

        like = inox_io.abstract(TiedMLP, jax.random.key(0))  # shapes only, nothing allocated
        restored = inox_io.load(path, like)
        assert restored.l1 is restored.l2
        assert restored.l3.weight.value is restored.l4.weight.value
        same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), restored, model)
        assert all(jax.tree.leaves(same))
        print(f"restored {path.name}: ties intact, values equal")

    print(inox.tree.prepr(restored))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    if args.dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
    else:
        args.dir.mkdir(parents=True, exist_ok=True)
        main(args.dir)
