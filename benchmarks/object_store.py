r"""Saves and loads on object storage, against emulators on 127.0.0.1: moto's S3 server
and gcp-storage-emulator's GCS server (``tests/inox_io/object_servers.py``).

Per case and scheme: inox_io (a single safetensors file, the sharded directory, and the
orbax layout),
the same bytes as one object through the same client (tensorstore's kvstore: the least
any library on it can do), and orbax's ``StandardCheckpointer`` on GCS (it needs
``gcsfs`` for its directories; skipped without it; orbax does not write to S3).

Emulator figures are not cloud figures: both servers run in this process, in Python,
over loopback, and keep objects in memory; they measure the work on the client's side
and the number of requests, not a network.

Usage::

    python -m benchmarks.object_store                # 64 MiB: 1 array; 2,000 arrays
    python -m benchmarks.object_store --repeat 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "inox_io"))  # the servers the tests start

from object_servers import BUCKET, Servers  # noqa: E402

#: case: (title, arrays of float32 items)
CASES = {
    "a": ("1 float32 array of 64 MiB", [2**24]),
    "b": ("2,000 float32 arrays of 32 KiB (62.5 MiB)", [8192] * 2000),
}


def best(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def methods(scheme: str, tree: Dict[str, np.ndarray], run: str) -> Dict[str, Tuple[Callable[[], None], Callable[[], None]]]:
    r"""Per method, its save and its load (each leaves nothing to wait for)."""

    import inox_io

    from inox_io.storage import locate
    from inox_io.storage.bucket import bucket

    base = f"{scheme}://{BUCKET}/bench/{run}"
    out = {}
    layouts = [("inox_io safetensors", f"{base}/model.safetensors", None), ("inox_io sharded", f"{base}/ckpt", None)]
    layouts.append(("inox_io orbax layout", f"{base}/orbax", "orbax"))
    for name, path, layout in layouts:
        out[name] = (
            lambda path=path, layout=layout: inox_io.save(path, tree, overwrite=True, format=layout),
            lambda path=path: jax.block_until_ready(inox_io.load(path, tree)),
        )

    where = locate(f"{base}/plain")
    payload = b"".join(x.tobytes() for x in tree.values())  # prepared once, not timed
    out["plain kvstore object"] = (
        lambda: bucket(where).put_many([(where.key, payload)]),
        lambda: bucket(where).get(where.key),
    )

    if scheme == "gs":
        try:
            import gcsfs  # noqa: F401  (orbax's directories on gs:// go through it)
            import orbax.checkpoint as ocp
        except ImportError:
            return out
        checkpointer = ocp.StandardCheckpointer()
        count = iter(range(10**6))
        last: List[str] = []

        def orbax_save() -> None:
            last.append(f"gs://{BUCKET}/bench/{run}/orbax-{next(count)}")  # orbax refuses to overwrite
            checkpointer.save(last[-1], tree)
            checkpointer.wait_until_finished()

        out["orbax StandardCheckpointer"] = (orbax_save, lambda: jax.block_until_ready(checkpointer.restore(last[-1])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is kept")
    args = parser.parse_args()

    servers = Servers()
    os.environ.update(servers.environment)
    rng = np.random.default_rng(0)
    rows = []
    try:
        for case, (title, sizes) in CASES.items():
            tree = {f"p{i:04d}": rng.standard_normal(n, dtype=np.float32) for i, n in enumerate(sizes)}
            mib = sum(x.nbytes for x in tree.values()) / 2**20
            for scheme in ("s3", "gs"):
                for name, (save, load) in methods(scheme, tree, f"{case}-{scheme}").items():
                    save_s = best(save, args.repeat)
                    load_s = best(load, args.repeat)
                    rows.append((case, scheme, name, save_s, load_s, mib))
                    print(f"| {case} | {scheme} | {name} | {save_s:.2f} s ({mib / save_s:.0f} MiB/s) "
                          f"| {load_s:.2f} s ({mib / load_s:.0f} MiB/s) |", flush=True)  # fmt: skip
    finally:
        servers.stop()
    print("\ncases: " + "; ".join(f"{c}: {t}" for c, (t, _) in CASES.items()))


if __name__ == "__main__":
    main()
