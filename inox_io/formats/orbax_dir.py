r"""The directory format: the arrays as an orbax checkpoint, beside the manifest.

.. code-block:: text

    <directory>/
        manifest.json   the v1 manifest (written last: without it, a save is unfinished)
        arrays/         an orbax (StandardCheckpointer) checkpoint of {name: array}

Each stored key is one entry of a flat orbax dictionary, named by :func:`orbax_name`
(the key itself, for keys of printable ASCII without ``/``, ``\`` or ``%``), so plain
orbax reads the arrays back without inox_io. Every process writes and reads only its
own shards; nothing is gathered. The layout is specified in ``docs/format.md``
(section "Directory (orbax) format").

A save in one process (which holds every array whole) records each array's CRC-32 in
the manifest, as the file formats do; a save across processes records :py:`None` (no
process holds a whole array). Loads and :meth:`OrbaxReader.verify` check the checksums
of the arrays restored whole on one process.

Example:
    >>> import os, tempfile
    >>> import orbax.checkpoint as ocp
    >>> path = tempfile.mkdtemp() + '/ckpt'
    >>> _ = inox_io.save(path, {'w': jnp.arange(3.0)})
    >>> sorted(os.listdir(path))
    ['arrays', 'manifest.json']
    >>> ocp.StandardCheckpointer().restore(path + '/arrays')
    {"['w']": Array([0., 1., 2.], dtype=float32)}
    >>> inox_io.inspect(path).arrays["['w']"].crc32  # a save in one process
    '30c8bc70'
"""

from __future__ import annotations

__all__ = ["OrbaxDirectoryFormat", "OrbaxReader", "orbax_name"]

import concurrent.futures
import ctypes
import errno
import jax
import math
import numpy as np
import os
import secrets
import shutil

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping

from .. import distributed
from ..atomic import TEMP_PREFIX, AtomicFile, fsync_directory, temporary_path, write_all
from ..errors import CHECKSUM_MISMATCH, CheckpointError, damage_error
from ..manifest import MAX_MANIFEST_BYTES, ArrayInfo, Manifest
from .checksums import Checksums, crc32
from .interface import Format, Reader, Target
from .transfer import host_bytes, place

MANIFEST = "manifest.json"
ARRAYS = "arrays"

#: Dtypes that tensorstore cannot store, and how they are stored instead (as uint8):
#: integers by value, floating types by bits.
WIDENED = {
    "uint2": "value",
    "uint4": "value",
    "float8_e4m3": "bits",
    "float6_e2m3fn": "bits",
    "float6_e3m2fn": "bits",
}

#: Shardings that also fit key data (one more trailing dimension than the keys).
KEY_DATA_SHARDINGS = (jax.sharding.NamedSharding, jax.sharding.SingleDeviceSharding)

_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - set("/\\%")


def orbax_name(key: str) -> str:
    r"""The name of a stored key in the orbax checkpoint: the key, with the characters
    that could act as path separators (and the escape itself) percent-encoded.

    Example:
        >>> orbax_name(".l1.value.weight.value"), orbax_name("['a/b']")
        ('.l1.value.weight.value', "['a%2Fb']")
    """

    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in key)


def orbax_dtype(info: ArrayInfo) -> np.dtype:
    r"""The dtype of an array as orbax stores it."""

    return np.dtype(np.uint8) if info.dtype in WIDENED and not info.key_impl else info.storage_dtype


def to_orbax(info: ArrayInfo, x: Any) -> Any:
    r"""An array as orbax stores it (shards stay where they are)."""

    if isinstance(x, np.generic):
        x = np.asarray(x)
    if info.key_impl:
        return jax.random.key_data(x)
    how = WIDENED.get(info.dtype)
    if how is None:
        return x
    if isinstance(x, np.ndarray):
        return x.astype(np.uint8) if how == "value" else x.view(np.uint8)
    return x.astype(np.uint8) if how == "value" else jax.lax.bitcast_convert_type(x, np.uint8)


def from_orbax(info: ArrayInfo, x: Any) -> Any:
    r"""Inverse of :func:`to_orbax`, on the device (or host) where :py:`x` lies."""

    how = WIDENED.get(info.dtype)
    if info.key_impl or how is None:
        return x
    dtype = info.storage_dtype
    if isinstance(x, np.ndarray):
        return x.astype(dtype) if how == "value" else x.view(dtype)
    return x.astype(dtype) if how == "value" else jax.lax.bitcast_convert_type(x, dtype)


def empty(info: ArrayInfo) -> bool:
    r"""Whether an array has no elements (and so is not stored in ``arrays/``)."""

    return math.prod(info.storage_shape) == 0


def checksums(manifest: Manifest, arrays: Mapping[str, Any]) -> Dict[str, str]:
    r"""The CRC-32 of each array's stored bytes (section 6 of ``docs/format.md``: those
    the file formats checksum), which needs every array whole in this process."""

    out = {}
    for key, info in manifest.arrays.items():
        data = host_bytes(arrays[key])  # one array on the host at a time
        if data.nbytes != info.nbytes:
            raise ValueError(f"{key}: {data.nbytes} bytes, {info.nbytes} expected")
        out[key] = f"{crc32(memoryview(data)):08x}"
    return out


def checkable(x: Any) -> bool:
    r"""Whether this process holds a restored array whole, so that its checksum can be
    computed here."""

    return not isinstance(x, jax.Array) or x.is_fully_addressable


def default_sharding() -> jax.sharding.Sharding:
    r"""This process's default device (never a device of another process or machine)."""

    device = jax.config.jax_default_device
    if not isinstance(device, jax.Device):
        device = jax.local_devices(backend=device)[0]
    return jax.sharding.SingleDeviceSharding(device)


def host_only(info: ArrayInfo) -> bool:
    r"""Whether JAX cannot hold the array exactly (64-bit data without ``jax_enable_x64``)."""

    dtype = info.storage_dtype
    return not info.key_impl and info.dtype not in WIDENED and jax.dtypes.canonicalize_dtype(dtype) != dtype


class OrbaxDirectoryFormat(Format):
    r"""Directories: existing ones, and paths without a suffix."""

    name, suffix, description = "orbax", "", "checkpoint directories"
    collective = True

    def matches(self, path: Path) -> bool:
        return path.is_dir() or path.suffix == ""

    def write(
        self,
        path: Path,
        manifest: Manifest,
        arrays: Mapping[str, Any],
        *,
        overwrite: bool,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        # No place for extra metadata: the manifest holds what it repeats.
        import orbax.checkpoint as ocp  # imported here: orbax is slow to import and only needed here

        path = Path(path).absolute()
        check_target(path, overwrite)  # on every process, before any collective: all fail alike
        # A checksum needs the whole array: only a save in one process holds them all.
        # Across processes, each holds some shards only, and gathering them would defeat
        # this format's purpose: no checksums (null) there.
        single = jax.process_count() == 1
        for info in manifest.arrays.values():
            info.crc32 = None

        primary = distributed.is_primary()
        temp = shared_temporary_path(path)
        error: BaseException | None = None
        items: Dict[str, Any] = {}
        try:
            if primary:
                temp.mkdir()
            # Orbax refuses empty arrays; the manifest alone describes them.
            items = {
                orbax_name(key): to_orbax(manifest.arrays[key], x)
                for key, x in arrays.items()
                if not empty(manifest.arrays[key])
            }
        except Exception as e:
            error = e
        # Also the barrier: nobody writes before the directory exists, and no process
        # enters orbax's collective save that another would not reach.
        try:
            distributed.agree(path, error)
        except BaseException:
            if primary and temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
            raise

        try:
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inox_io-crc32") as pool:
                # Checksummed in a thread (crc32 releases the GIL) while orbax writes.
                crcs = pool.submit(checksums, manifest, arrays) if single else None
                if items:
                    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler(), multiprocessing_options=runtime_barriers())
                    try:
                        # Collective: each process writes its own shards; orbax waits for all.
                        checkpointer.save(temp / ARRAYS, args=ocp.args.StandardSave(items))
                    finally:
                        checkpointer.close()
                if crcs is not None:
                    for key, value in crcs.result().items():
                        manifest.arrays[key].crc32 = value
        except BaseException as e:
            error = e
        try:
            # Every process's shards are written (or none commits) before the manifest.
            distributed.agree(path, error)
            if primary:
                with AtomicFile(temp / MANIFEST) as f:
                    write_all(f.fd, manifest.to_json().encode())
                fsync_directory(temp)
                commit(temp, path, overwrite)
            error = None
        except BaseException as e:
            error = e
        finally:
            if primary and temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
        distributed.agree(path, error)

    def open(self, path: Path) -> OrbaxReader:
        return OrbaxReader(path)


def check_target(path: Path, overwrite: bool) -> None:
    r"""Refuses targets that cannot or must not be replaced."""

    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory")
    if not os.path.lexists(path) or (path.is_dir() and not any(path.iterdir())):
        return  # an empty directory holds nothing to lose (e.g. from tempfile.mkdtemp)
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not (path / MANIFEST).is_file():
        # overwrite=True must never wipe a directory that is not a checkpoint
        raise FileExistsError(
            f"{path} exists and is not an inox_io checkpoint directory; refusing to replace it"
        )


def shared_temporary_path(path: Path) -> Path:
    r"""A temporary name beside :py:`path`, the same on every process."""

    if jax.process_count() == 1:
        return temporary_path(path)
    pid, token = distributed.broadcast("temporary", [os.getpid(), secrets.token_hex(4)])
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{pid}.{token}")


def runtime_barriers() -> Any:
    r"""Orbax options that make its barriers those of the distributed runtime, not
    device collectives, which would deadlock against the training loop's own when a
    save runs in a background thread."""

    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    return ocp.options.MultiprocessingOptions(
        active_processes=set(range(jax.process_count())), barrier_sync_key_prefix=distributed.name("orbax")
    )


def commit(temp: Path, path: Path, overwrite: bool) -> None:
    r"""Moves the finished directory :py:`temp` to :py:`path`.

    Replacing a checkpoint swaps both directories atomically where the system can
    (``renameat2(RENAME_EXCHANGE)``); elsewhere, the old one is moved aside first, so
    that for a moment neither sits at :py:`path` (both survive under temporary names).
    """

    if overwrite and os.path.lexists(path) and exchange(temp, path):
        shutil.rmtree(temp, ignore_errors=True)  # temp now holds the old checkpoint
    elif overwrite and os.path.lexists(path):
        old = temporary_path(path)
        os.rename(path, old)
        os.rename(temp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            # Fails on a non-empty directory: a checkpoint appearing meanwhile is not lost.
            os.rename(temp, path)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
            raise
    fsync_directory(path.parent)


def exchange(a: Path, b: Path) -> bool:
    r"""Swaps two paths atomically; returns whether the system could."""

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def reason(e: BaseException) -> str:
    r"""What failed, in one line: orbax wraps tensorstore's error, which says it, in one
    that dumps the whole tensorstore spec."""

    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:500]


class OrbaxReader(Reader):
    r"""An open checkpoint directory; orbax is consulted only when arrays are read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(self.path, "not a directory (a checkpoint directory expected)")
        file = self.path / MANIFEST
        if not file.is_file():
            raise CheckpointError(
                self.path, f"no {MANIFEST}: not an inox_io checkpoint, or an unfinished save"
            )
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise CheckpointError(self.path, f"{MANIFEST} exceeds the {MAX_MANIFEST_BYTES} bytes allowed")
        self.manifest = Manifest.from_json(file.read_bytes(), source=str(self.path))
        self._stored: Dict[str, Any] | None = None

    @property
    def arrays(self) -> Path:
        return self.path.absolute() / ARRAYS

    def stored(self) -> Dict[str, Any]:
        r"""Orbax's metadata (shape, dtype) of each entry, by name."""

        if self._stored is None:
            import orbax.checkpoint as ocp

            try:
                self._stored = dict(ocp.PyTreeCheckpointHandler().metadata(self.arrays).tree)
            except Exception as e:
                raise CheckpointError(
                    self.path, f"{ARRAYS}/ is not a readable orbax checkpoint ({reason(e)})"
                ) from None
        return self._stored

    def check(self, key: str) -> None:
        info, entry = self.manifest.arrays[key], self.stored().get(orbax_name(key))
        if entry is None:
            raise CheckpointError(self.path, f"listed in the manifest but not stored in {ARRAYS}/", key=key)
        shape, dtype = tuple(entry.shape), np.dtype(entry.dtype)
        if (shape, dtype) != (info.storage_shape, orbax_dtype(info)):
            raise CheckpointError(
                self.path,
                f"{ARRAYS}/ holds {dtype.name}{list(shape)}, the manifest says "
                f"{orbax_dtype(info).name}{list(info.storage_shape)}",
                key=key,
            )

    def restore(self, items: Mapping[str, Any], args: Mapping[str, Any]) -> Dict[str, Any]:
        r"""Restores the named entries only (partial restore)."""

        import orbax.checkpoint as ocp

        names = {orbax_name(k): k for k in items}
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                self.arrays,
                args=ocp.args.PyTreeRestore(
                    item={orbax_name(k): v for k, v in items.items()},
                    restore_args={orbax_name(k): v for k, v in args.items()},
                    partial_restore=True,
                ),
            )
        except Exception as e:
            raise CheckpointError(self.path, f"{ARRAYS}/ could not be read ({reason(e)})") from None
        return {names[name]: x for name, x in restored.items()}

    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, Any]:
        import orbax.checkpoint as ocp

        items, args, after, out = {}, {}, {}, {}
        for key, target in targets.items():
            info = self.manifest.arrays[key]
            if empty(info) or target.transform is not None:
                # A transform runs on the host: its output's shape decides the placement.
                stored = self.stored_host(key)
                if verify:
                    self.check_checksums({key: stored})
                out[key] = place(*target.apply(info, from_orbax(info, stored)), target)
                continue
            self.check(key)
            shape, dtype = info.storage_shape, orbax_dtype(info)
            if host_only(info):
                if target.sharding is not None:
                    raise ValueError(f"{info.dtype} arrays need jax_enable_x64 to be placed on a sharding")
                items[key] = jax.ShapeDtypeStruct(shape, dtype)
                args[key] = ocp.RestoreArgs(restore_type=np.ndarray)
                continue
            sharding = target.sharding or default_sharding()
            if info.key_impl and not isinstance(sharding, KEY_DATA_SHARDINGS):
                # Key data has trailing dimensions, which only these shardings extend to.
                after[key], sharding = sharding, default_sharding()
            items[key] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            args[key] = ocp.ArrayRestoreArgs(sharding=sharding, global_shape=shape, dtype=dtype)

        restored = self.restore(items, args) if items else {}
        if verify:
            for key, x in restored.items():
                info = self.manifest.arrays[key]
                if (tuple(x.shape), np.dtype(x.dtype)) != (info.storage_shape, orbax_dtype(info)):
                    raise CheckpointError(self.path, f"read {x.dtype}{list(x.shape)} from {ARRAYS}/", key=key)
            self.check_checksums(restored)
        for key, x in restored.items():
            info = self.manifest.arrays[key]
            x = from_orbax(info, x)
            if info.key_impl:
                x = jax.random.wrap_key_data(x, impl=info.key_impl)
            out[key] = jax.device_put(x, after[key]) if key in after else x
        return out

    def mismatches(self, restored: Mapping[str, Any]) -> List[str]:
        r"""The keys of the restored arrays (as orbax stores them) whose bytes do not
        have the manifest's checksum. Arrays without checksum, or not held whole by this
        process (spanning processes), are not checked.

        Each array is copied to the host (no copy for one on a CPU device; a sharded
        one is gathered there), and checksummed in a thread while the next is copied.
        """

        checked = [
            key for key, x in restored.items() if self.manifest.arrays[key].crc32 is not None and checkable(x)
        ]
        with Checksums() as crcs:
            for key in checked:
                crcs.submit([(key, memoryview(host_bytes(restored[key])))])
                crcs.wait(pending=1)  # at most two host copies alive
        return [key for key in checked if crcs.hex(key) != self.manifest.arrays[key].crc32]

    def check_checksums(self, restored: Mapping[str, Any]) -> None:
        damaged = self.mismatches(restored)
        if damaged:
            raise damage_error(self.path, dict.fromkeys(damaged, CHECKSUM_MISMATCH))

    def stored_host(self, key: str) -> np.ndarray:
        r"""The entry of :py:`key` on the host, as orbax stores it (see :func:`to_orbax`)."""

        import orbax.checkpoint as ocp

        info = self.manifest.arrays[key]
        if empty(info):
            return np.zeros(info.storage_shape, orbax_dtype(info))
        self.check(key)
        item = {key: jax.ShapeDtypeStruct(info.storage_shape, orbax_dtype(info))}
        return np.asarray(self.restore(item, {key: ocp.RestoreArgs(restore_type=np.ndarray)})[key])

    def host(self, key: str) -> np.ndarray:
        info = self.manifest.arrays[key]
        if empty(info):
            return np.zeros(info.storage_shape, info.storage_dtype)
        return from_orbax(info, self.stored_host(key))

    def verify(self, keys: Iterable[str] | None = None) -> Dict[str, str]:
        r"""Reads every array through orbax onto the host and checks its checksum, where
        the manifest has one. Tensorstore's own checks catch missing, truncated or
        undecodable data; without a checksum (a save across processes), a changed byte
        may pass."""

        problems = {}
        for key in self.manifest.arrays if keys is None else keys:
            try:
                if self.mismatches({key: self.stored_host(key)}):
                    problems[key] = CHECKSUM_MISMATCH
            except CheckpointError as e:
                problems[key] = e.message
        return problems
