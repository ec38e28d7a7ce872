r"""Trains a small causal transformer language model whose output head is tied to its
token embedding, data- and model-parallel over 8 CPU devices, and checkpoints it so
that a run killed at any moment resumes bit for bit.

    python examples/train_tied_lm.py --dir /tmp/lm --steps 12 --every 3
    python examples/train_tied_lm.py --dir /tmp/lm --steps 12 --every 3 --resume
    python examples/train_tied_lm.py --dir /tmp/lm2 --steps 12 --processes 2  # 2 x 4 devices

With ``--processes N``, the script starts N processes of itself on this machine (the
coordinator on 127.0.0.1), each with 8 / N devices, as a job on N hosts would run: the
arrays span processes, every process writes its own shards of each step, and process
0 commits it. ``SIGTERM`` (to this script or any of its processes) is a preemption:
every process saves the same step and exits 0.

What a resumable run must checkpoint, and does here (:class:`inox_io.CheckpointManager`):

* the model, whose head and embedding are one array (``nn.Scope`` + ``nn.Reference``),
  saved once and restored tied;
* the optimizer state (AdamW moments, and the step count that drives the schedule);
* the PRNG key (dropout);
* the step and the position of the data stream (JSON items, restored as saved).

Each step also asks :meth:`~inox_io.CheckpointManager.reached_preemption`: once the job
is told to stop, the step is saved (``force=True``) and the run ends.

Every step prints ``step <n> loss <float.hex()>``: hexadecimal floats compare exactly.
The arrays are restored onto the shardings they are trained on, and the step function
fixes its input and output shardings, so the resumed run executes the very same
programs on the very same values as an uninterrupted one.
"""

from __future__ import annotations

import os

# Before importing JAX: 8 CPU devices (in all), and CPU only (GPU reductions may be
# non-deterministic, which would break the bit-for-bit comparison).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import signal
import socket
import subprocess

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import sys
import time

from jax.sharding import NamedSharding, PartitionSpec as P
from typing import Any, Dict, Tuple

import inox.nn as nn
import inox_io


class Block(nn.Module):
    r"""A pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, features: int, heads: int, dropout: float, *, key: jax.Array):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = nn.LayerNorm()
        self.attn = nn.MultiheadAttention(features, heads=heads, key=k1, causal=True)
        self.norm2 = nn.LayerNorm()
        self.up = nn.Linear(features, 4 * features, key=k2)
        self.down = nn.Linear(4 * features, features, key=k3)
        self.drop = nn.Dropout(dropout)

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        k1, k2 = jax.random.split(key)
        x = x + self.drop(self.attn(self.norm1(x)), k1)
        return x + self.drop(self.down(jax.nn.gelu(self.up(self.norm2(x)))), k2)


class TiedLM(nn.Scope):
    r"""A causal language model whose output head is its token embedding.

    Example:
        >>> model = TiedLM(vocab=16, length=8, features=8, heads=2, depth=1, key=jax.random.key(0))
        >>> model.head is model.embed  # one array, two uses
        True
        >>> model(jnp.zeros((2, 8), int), jax.random.key(1)).shape
        (2, 8, 16)
    """

    def __init__(self, vocab: int, length: int, features: int, heads: int, depth: int, dropout: float = 0.1, *, key):
        keys = jax.random.split(key, depth + 2)
        self.embed = nn.Reference("embed", nn.Embedding(vocab, features, key=keys[0]))
        self.head = self.embed  # tied: the same Reference, stored once
        self.position = nn.Parameter(0.02 * jax.random.normal(keys[1], (length, features)))
        self.blocks = [Block(features, heads, dropout, key=k) for k in keys[2:]]
        self.norm = nn.LayerNorm()
        self.scale = features**-0.5  # unit-variance features against N(0, 1) embeddings

    def __call__(self, tokens: jax.Array, key: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.position()[: tokens.shape[-1]]
        for block, k in zip(self.blocks, jax.random.split(key, len(self.blocks))):
            x = block(x, k)
        return self.head.attend(self.norm(x)) * self.scale


def batch(seed: int, index: int, size: int, length: int, vocab: int) -> np.ndarray:
    r"""Batch :py:`index` of a synthetic stream: arithmetic progressions modulo the
    vocabulary (learnable). A pure function of its position, so the data position
    alone restores the stream."""

    rng = np.random.default_rng([seed, index])
    start = rng.integers(0, vocab, (size, 1))
    stride = rng.integers(1, 4, (size, 1))
    return ((start + stride * np.arange(length + 1)) % vocab).astype(np.int32)


def param_spec(path: str, ndim: int) -> P:
    r"""Model parallelism: the vocabulary and the MLP/attention inner features are
    split over the 'model' axis; the rest is replicated."""

    if path.startswith(".embed"):
        return P("model", None)  # the tied embedding/head: vocabulary split
    if any(f".{name}.weight" in path for name in ("up", "lin_q", "lin_k", "lin_v")):
        return P(None, "model")
    if any(f".{name}.weight" in path for name in ("down", "lin_y")):
        return P("model", None)
    if ".up.bias" in path:
        return P("model")
    return P()


def state_shardings(abstract_state: Any, params: Dict[str, NamedSharding], replicated) -> Any:
    r"""Optimizer state leaves under a parameter's key (the moments) share its
    sharding; the others (counts) are replicated."""

    def choose(path, leaf):
        keys = [k.key for k in path if isinstance(k, jtu.DictKey)]
        return params[keys[-1]] if keys and keys[-1] in params else replicated

    return jtu.tree_map_with_path(choose, abstract_state)


def launch(processes: int, argv) -> int:
    r"""Runs this script as a job of :py:`processes` local processes; forwards
    ``SIGTERM`` to them (a preemption) and returns the worst exit code."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}
    children = [
        subprocess.Popen([sys.executable, __file__, *argv, "--process-id", str(i), "--coordinator", f"127.0.0.1:{port}"], env=env)
        for i in range(processes)
    ]
    signal.signal(signal.SIGTERM, lambda *_: children[-1].send_signal(signal.SIGTERM))
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3, help="checkpoint every this many steps")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint, if any")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sync", action="store_true", help="write checkpoints in the foreground")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to sleep after each step (a slow data loader)")
    parser.add_argument("--processes", type=int, default=1, help="run as a job of this many local processes")
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)  # set by launch()
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.processes > 1 and args.process_id is None:
        sys.exit(launch(args.processes, sys.argv[1:] if argv is None else argv))
    if args.process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, num_processes=args.processes, process_id=args.process_id)
    lead = jax.process_index() == 0  # prints for the job

    vocab, length, features, heads, depth, batch_size = 32, 16, 32, 4, 2, 16

    devices = jax.devices()
    model_axis = 2 if len(devices) % 2 == 0 else 1
    # Auto axes: the compiler propagates the shardings fixed below through the model.
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((len(devices) // model_axis, model_axis), ("data", "model"), axis_types=auto)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data", None))

    # A fresh state always comes first: it is also the `like` of the restore. The
    # model is built once abstractly (for its structure and shardings), then by one
    # compiled call straight onto its shardings (eagerly, every layer would compile).
    # The other arrays are constants (dropout rates, normalization epsilons): replicated.
    def init(key: jax.Array) -> Tuple[Dict[str, jax.Array], Dict[str, jax.Array]]:
        _, params, others = TiedLM(vocab, length, features, heads, depth, key=key).partition(nn.Parameter)
        return params, others

    shapes = inox_io.abstract(TiedLM, vocab, length, features, heads, depth, key=jax.random.key(0))
    modef, shapes, other_shapes = shapes.partition(nn.Parameter)
    param_shardings = {k: NamedSharding(mesh, param_spec(k, v.ndim)) for k, v in shapes.items()}
    other_shardings = {k: replicated for k in other_shapes}
    params, others = jax.jit(init, out_shardings=(param_shardings, other_shardings))(jax.random.key(args.seed))

    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, max(args.steps, 4))
    optimizer = optax.adamw(schedule, weight_decay=1e-2)
    opt_shardings = state_shardings(jax.eval_shape(optimizer.init, params), param_shardings, replicated)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    key = jax.jit(lambda: jax.random.key(args.seed + 1), out_shardings=replicated)()  # also across processes
    step, next_batch = 0, 0

    def train_step(params, opt_state, key, tokens) -> Tuple[Any, Any, jax.Array, jax.Array]:
        key, dropout_key = jax.random.split(key)

        def loss_fn(params):
            logits = modef(params, others)(tokens[:, :-1], dropout_key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    # Fixed shardings in and out: every step, first after a resume included, runs the
    # same compiled program. Donation is safe with async saves: they copy first.
    train_step = jax.jit(
        train_step,
        in_shardings=(param_shardings, opt_shardings, replicated, batch_sharding),
        out_shardings=(param_shardings, opt_shardings, replicated, replicated),
        donate_argnums=(0, 1, 2),
    )

    manager = inox_io.CheckpointManager(
        args.dir, max_to_keep=2, save_interval_steps=args.every, async_save=not args.sync
    )
    with manager:
        if manager.latest_step() is not None:
            if not args.resume:
                sys.exit(f"{args.dir} holds checkpoints; pass --resume to continue from them")
            like = {"model": modef(params, others), "opt_state": opt_state, "rng": key}
            restored = manager.restore(like=like)
            _, params, _ = restored["model"].partition(nn.Parameter)
            opt_state, key = restored["opt_state"], restored["rng"]
            step, next_batch = restored["step"], restored["data"]["next_batch"]
            if restored["data"]["seed"] != args.seed:
                sys.exit(f"the checkpoint was trained with --seed {restored['data']['seed']}")
            if lead:
                print(f"resumed from step {step}", flush=True)

        while step < args.steps:
            host = batch(args.seed, next_batch, batch_size, length, vocab)  # every process draws it
            tokens = jax.make_array_from_callback(host.shape, batch_sharding, lambda index: host[index])
            params, opt_state, key, loss = train_step(params, opt_state, key, tokens)
            step, next_batch = step + 1, next_batch + 1
            loss = float(loss.addressable_data(0))  # replicated: this process's copy
            if lead:
                print(f"step {step} loss {loss.hex()} ({loss:.5f})", flush=True)

            items = {
                "model": modef(params, others),  # tied: the embedding is stored once
                "opt_state": opt_state,
                "rng": key,
                "step": step,
                "data": {"seed": args.seed, "next_batch": next_batch},
            }
            if manager.reached_preemption(step):  # on every process at the same step
                manager.save(step, items, metrics={"loss": loss}, force=True)
                if lead:
                    print(f"preempted: saved step {step}", flush=True)
                break
            manager.save(step, items, metrics={"loss": loss}, force=step == args.steps)
            time.sleep(args.delay)


if __name__ == "__main__":
    main()
