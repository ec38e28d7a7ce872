r"""The directory format: the arrays as an orbax checkpoint, beside the manifest.

.. code-block:: text

    <directory>/
        manifest.json   the v1 manifest (written last: without it, a save is unfinished)
        arrays/         an orbax (PyTreeCheckpointHandler) checkpoint of {name: array}

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
    >>> _ = inox_io.save(path, {'w': jnp.arange(3.0)}, format='orbax')
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
import errno
import jax
import math
import numpy as np
import os
import re

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping

from .. import distributed
from ..atomic import MAX_REPLACEMENTS, again_if_replaced, open_regular, read_regular, replaced, save_error
from ..dtypes import is_key_dtype
from ..errors import CHECKSUM_MISMATCH, CheckpointError, damage_error, unchecked_error
from ..manifest import MAX_MANIFEST_BYTES, ArrayInfo, Manifest
from ..storage.ranges import superseded
from .checksums import Checksums, crc32
from .directory_commit import MANIFEST, reporting_growth, save_directory
from .interface import Format, Reader, Target
from .orbax_arrays import CHUNK_BYTES, OrbaxArrays
from .transfer import host_bytes, place

ARRAYS = "arrays"

#: OCDBT's target size of a data file (orbax's ``ocdbt_target_data_file_size``): with
#: chunks of at most CHUNK_BYTES, files stay under the 64 MiB of one object of object
#: storage, so that readers there read the objects in place (orbax's default makes
#: files of any size).
DATA_FILE_BYTES = 32 * 2**20

#: Dtypes that tensorstore cannot store, and how they are stored instead (as uint8):
#: integers by value, floating types by bits.
WIDENED = {
    "uint2": "value",
    "uint4": "value",
    "float8_e4m3": "bits",
    "float6_e2m3fn": "bits",
    "float6_e3m2fn": "bits",
}

#: The files of ``arrays/`` that hold the arrays' bytes, which tensorstore reads in
#: part: OCDBT's manifests and data files, zarr's chunks (``1.0``).
ORBAX_DATA_FILE = re.compile(r"manifest\.ocdbt|[0-9a-f]{32}|[0-9]+(\.[0-9]+)*")

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
        # Keys, or already their data (a host array read from another checkpoint).
        return jax.random.key_data(x) if is_key_dtype(x.dtype) else x
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

    def reads_in_ranges(self, name: str) -> bool:
        return ORBAX_DATA_FILE.fullmatch(name) is not None

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
        progress: Callable[[int], None] | None = None,
    ) -> None:
        # No place for extra metadata: the manifest holds what it repeats.
        path = Path(path).absolute()
        own_folders = jax.process_count() > 1 and distributed.in_own_folders()  # on every process alike
        # A checksum needs the whole array: only a save in one process holds them all.
        # Across processes, each holds some shards only, and gathering them would defeat
        # this format's purpose: no checksums (null) there.
        single = jax.process_count() == 1
        for info in manifest.arrays.values():
            info.crc32 = None
        # Said in the manifest, so that readers tell this null from a crafted one.
        manifest.no_checksums = None if single else f"saved by {jax.process_count()} processes, none holding every array whole"

        def prepare() -> Dict[str, Any]:
            # Orbax refuses empty arrays; the manifest alone describes them.
            return {orbax_name(key): to_orbax(manifest.arrays[key], x) for key, x in arrays.items() if not empty(manifest.arrays[key])}

        def write(temp: Path, items: Dict[str, Any]) -> None:
            import orbax.checkpoint as ocp  # imported here: orbax is slow to import and only needed here

            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inox_io-crc32") as pool:
                # Checksummed in a thread (crc32 releases the GIL) while orbax writes.
                crcs = pool.submit(checksums, manifest, arrays) if single else None
                if items:
                    checkpointer = orbax_checkpointer(own_folders)
                    try:
                        # Collective: each process writes its own shards; orbax waits for all.
                        # Orbax reports no progress: the files growing in the temporary do
                        # (orbax writes into a temporary of its own there, then renames it).
                        with reporting_growth(temp, progress, manifest.nbytes):
                            # Chunks of at most CHUNK_BYTES: a load decodes one chunk at a
                            # time, not each array (or shard) whole.
                            chunked = {name: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES) for name in items}
                            save = ocp.args.PyTreeSave(items, save_args=chunked, ocdbt_target_data_file_size=DATA_FILE_BYTES)
                            shielded(lambda: checkpointer.save(temp / ARRAYS, args=save))
                    finally:
                        checkpointer.close()
                    if own_folders and not distributed.is_primary():
                        drop_metadata_copies(temp / ARRAYS)
                if crcs is not None:
                    for key, value in crcs.result().items():
                        manifest.arrays[key].crc32 = value

        save_directory(path, overwrite, prepare=prepare, write=write, manifest=lambda parts: manifest.to_json(), failure=storage_failure)

    def open(self, path: Path) -> OrbaxReader:
        return OrbaxReader(path)


def shielded(write: Callable[[], Any]) -> None:
    r"""Runs :py:`write` (orbax's save) to its end, even through Ctrl-C: orbax's writer
    threads would go on writing into the temporary after the interrupt reached this
    thread, and refill it after it is removed. A KeyboardInterrupt meanwhile is raised
    once the write ended, so that the save's own temporary can be removed."""

    interrupted: KeyboardInterrupt | None = None
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inox_io-orbax") as pool:
        future = pool.submit(write)
        while not future.done():
            try:
                concurrent.futures.wait([future])
            except KeyboardInterrupt as e:
                interrupted = e
    if interrupted is not None:
        raise interrupted
    future.result()


def orbax_checkpointer(own_folders: bool) -> Any:
    r"""Orbax's checkpointer for a save from every process, into one folder they all
    see or, :py:`own_folders`, into a staging folder of each process's own that is
    uploaded afterwards (object storage).

    Orbax's barriers are those of the distributed runtime, not device collectives,
    which would deadlock against the training loop's own when a save runs in a
    background thread.

    In folders of their own, OCDBT cannot be used: orbax's process 0 ends a save by
    merging the per-process databases of every process, which it must see. Each array
    is then a zarr folder of chunk files, each written by the one process that holds
    its shard, which plain orbax reads as well; every process acts as orbax's primary
    (makes its folders, writes the tree's metadata, writes in place rather than into
    a temporary that process 0 alone would rename), and the copies of the metadata on
    the other processes are dropped (:func:`drop_metadata_copies`)."""

    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    everyone = set(range(jax.process_count()))
    prefix = distributed.name("orbax")
    if not own_folders:
        options = ocp.options.MultiprocessingOptions(active_processes=everyone, barrier_sync_key_prefix=prefix)
        return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=options), multiprocessing_options=options)
    options = ocp.options.MultiprocessingOptions(active_processes=everyone, barrier_sync_key_prefix=prefix, primary_host=None)
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, multiprocessing_options=options)
    in_place = ocp.path.atomicity.CommitFileTemporaryPath
    return ocp.Checkpointer(handler, multiprocessing_options=options, temporary_path_class=in_place)


#: Files that orbax writes on each of its primaries, alike on every process (the
#: tree's metadata, each zarr array's, the checkpoint's): process 0's copy is kept.
ORBAX_METADATA_FILES = frozenset({"_CHECKPOINT_METADATA", "_METADATA", "_sharding", "commit_success.txt", ".zarray", ".zattrs", "zarr.json"})


def drop_metadata_copies(arrays: Path) -> None:
    r"""Removes, from a process's own folder of an orbax save, the metadata that
    process 0's holds too (:data:`ORBAX_METADATA_FILES`), so that every file of the
    checkpoint has one writer; its chunk files stay.

    Example:
        >>> import tempfile
        >>> arrays = Path(tempfile.mkdtemp())
        >>> (arrays / 'w').mkdir()
        >>> for name in ('_METADATA', 'w/.zarray', 'w/1.0'):
        ...     _ = (arrays / name).write_text('')
        >>> drop_metadata_copies(arrays)
        >>> sorted(str(p.relative_to(arrays)) for p in arrays.rglob('*') if p.is_file())
        ['w/1.0']
    """

    for file in list(arrays.rglob("*")):
        if file.name in ORBAX_METADATA_FILES and file.is_file():
            file.unlink()


#: Tensorstore's status codes that report a storage failure, and the errno they stand
#: for where the message does not name one.
STORAGE_STATUSES = {"RESOURCE_EXHAUSTED": errno.ENOSPC, "DATA_LOSS": errno.EIO, "PERMISSION_DENIED": errno.EACCES}


def storage_failure(error: BaseException | None, path: Path) -> BaseException | None:
    r"""A failed save's error as the file layouts report it: a failing disk as an
    :class:`OSError` with its errno (orbax reports tensorstore's as a ``ValueError``
    naming the temporary), the user's path, and that the old checkpoint is untouched.
    Other errors are returned as they are.

    Example:
        >>> storage_failure(ValueError('RESOURCE_EXHAUSTED: Error writing "d/x": [OS error: No space left on device]'), Path('ckpt'))
        OSError(28, 'No space left on device (not saved; the checkpoint there, if any, is untouched)')
    """

    if error is None or isinstance(error, (FileExistsError, CheckpointError)):
        return error
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for e in chain:
        if isinstance(e, OSError) and e.errno is not None:
            return save_error(e, path)
    if not isinstance(error, Exception):
        return error  # KeyboardInterrupt, SystemExit: as they are
    text = " ".join(str(e) for e in chain)
    code = re.search(r"os_error_code='?([0-9]+)", text)  # tensorstore's own record of the errno
    if code is not None:
        return save_error(OSError(int(code.group(1)), os.strerror(int(code.group(1)))), path)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES):
        if os.strerror(code) in text:
            return save_error(OSError(code, os.strerror(code)), path)
    for status, code in STORAGE_STATUSES.items():
        if text.startswith(status) or f" {status}:" in text:
            return save_error(OSError(code, f"{os.strerror(code)}: {reason(error)}"), path)
    return error


def reason(e: BaseException) -> str:
    r"""What failed, in one line: orbax wraps tensorstore's error, which says it, in one
    that dumps the whole tensorstore spec."""

    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:500]


class OrbaxReader(Reader):
    r"""An open checkpoint directory; orbax is consulted only when arrays are read.

    A checkpoint replaced while it is read (an overwrite swapping directories) is
    noticed: the directory at the path is no longer the one opened. The read is then
    made again from the new checkpoint, so that a reader gets the old one or the
    new one, never a false damage report (old manifest, new arrays).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.open()

    def open(self) -> None:
        r"""Reads the manifest of the directory at the path, and which directory it is;
        again if an overwrite replaced the directory meanwhile (and is removing the old
        one)."""

        self.status: os.stat_result | None = None
        again_if_replaced(self.path, self.open_once, lambda: self.status)

    def open_once(self) -> None:
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise
        except NotADirectoryError:
            raise CheckpointError(self.path, "not a directory (a checkpoint directory expected)") from None
        except OSError as e:
            raise CheckpointError(self.path, f"cannot be opened ({e})") from None
        try:
            self.status = os.fstat(fd)
            try:
                text, _ = read_regular(MANIFEST, MAX_MANIFEST_BYTES, dir_fd=fd)
            except FileNotFoundError:
                raise CheckpointError(
                    self.path, f"no {MANIFEST}: not an inox_io checkpoint, or an unfinished save"
                ) from None
            except CheckpointError as e:
                raise CheckpointError(self.path, f"{MANIFEST}: {e.message}") from None
        finally:
            os.close(fd)
        self.manifest = Manifest.from_json(text, source=str(self.path), no_checksums_by_design=True)
        self._arrays: OrbaxArrays | None = None
        self._files_checked = False

    def consistently(self, read: Callable[[], Any]) -> Any:
        r"""Runs :py:`read`; if the checkpoint was replaced meanwhile (whatever came of
        the read: mixed arrays may even pass), opens the new one and runs it again, as
        long as saves keep replacing it (each replacement is a whole checkpoint, so a
        writer saving in a loop delays a reader, never misleads it).

        Raises:
            CheckpointError: if the new checkpoint describes other arrays or ties than
                the one opened (what was asked of it may not fit): read it again; or if
                it was replaced during each of :py:`MAX_REPLACEMENTS` reads.
        """

        for _ in range(MAX_REPLACEMENTS):
            try:
                out = read()
            except CheckpointError:
                if superseded(self.arrays):  # read in its bucket, whose objects a newer save removed
                    raise CheckpointError(self.path, "replaced by a newer save while it was read; read it again") from None
                if not replaced(self.path, self.status):
                    raise
            else:
                if not replaced(self.path, self.status):
                    return out
            before = self.manifest
            self.open()
            if not self.manifest.reads_as(before):
                raise CheckpointError(
                    self.path, "replaced by a checkpoint of other arrays or ties while it was read; read it again"
                )
        raise CheckpointError(self.path, f"replaced during each of {MAX_REPLACEMENTS} reads in a row; read it again")

    def check_files(self) -> None:
        r"""Refuses an ``arrays/`` holding anything but directories and regular files (a
        FIFO would block orbax forever), before orbax opens any of it."""

        if self._files_checked:
            return
        for folder, _, files in os.walk(self.arrays, onerror=None):
            for name in files:
                try:
                    os.close(open_regular(os.path.join(folder, name)))
                except FileNotFoundError:
                    continue  # a dangling link: orbax says what is missing
                except CheckpointError as e:
                    raise CheckpointError(self.path, f"{os.path.relpath(e.path, self.path)}: {e.message}") from None
        self._files_checked = True

    @property
    def arrays(self) -> Path:
        return self.path.absolute() / ARRAYS

    def compressed_bytes(self) -> int:
        r"""The size of the files of the orbax checkpoint (compressed chunks, and orbax's
        records of them)."""

        self.check_files()
        return sum(os.lstat(os.path.join(folder, name)).st_size for folder, _, names in os.walk(self.arrays) for name in names)

    def orbax_arrays(self) -> OrbaxArrays:
        r"""The arrays of ``arrays/``, opened through tensorstore (once per reader)."""

        if self._arrays is None:
            self.check_files()
            try:
                self._arrays = OrbaxArrays(self.arrays)
            except CheckpointError as e:
                raise CheckpointError(self.path, f"{ARRAYS}/: {e.message}") from None
            except Exception as e:
                raise CheckpointError(self.path, f"{ARRAYS}/ is not a readable orbax checkpoint ({reason(e)})") from None
        return self._arrays

    def open_entries(self, keys: Iterable[str]) -> None:
        r"""Opens the stored entries of :py:`keys` together, for :meth:`entry` to find:
        in a bucket, their requests are in flight at once, not one array after another."""

        names = [orbax_name(key) for key in keys]
        if not names:
            return  # a tree without arrays has no arrays/
        arrays = self.orbax_arrays()
        try:
            arrays.open_all(names)
        except Exception:
            pass  # entry() opens each again alone, and names the key that fails

    def entry(self, key: str) -> Any:
        r"""The stored entry of :py:`key` (its :py:`shape` and :py:`dtype`), or
        :py:`None` if there is none."""

        arrays = self.orbax_arrays()
        try:
            return arrays.open(orbax_name(key))
        except Exception as e:
            if "does not exist" in str(e):
                return None
            raise CheckpointError(self.path, f"{ARRAYS}/ could not be read ({reason(e)})", key=key) from None

    def check(self, key: str) -> None:
        info, entry = self.manifest.arrays[key], self.entry(key)
        if entry is None:
            raise CheckpointError(self.path, f"listed in the manifest but not stored in {ARRAYS}/", key=key)
        shape, dtype = tuple(entry.shape), np.dtype(getattr(entry.dtype, "numpy_dtype", entry.dtype))
        if (shape, dtype) != (info.storage_shape, orbax_dtype(info)):
            raise CheckpointError(
                self.path,
                f"{ARRAYS}/ holds {dtype.name}{list(shape)}, the manifest says "
                f"{orbax_dtype(info).name}{list(info.storage_shape)}",
                key=key,
            )

    def restore(self, items: Mapping[str, jax.ShapeDtypeStruct]) -> Dict[str, Any]:
        r"""Reads the entries of :py:`items` (stored keys) only, each onto the sharding of
        its item (a host array without one), a chunk at a time (see
        :mod:`.orbax_arrays`): the arrays returned and a few chunks, not orbax's second
        copy of each array."""

        arrays = self.orbax_arrays()
        wanted = {orbax_name(key): getattr(item, "sharding", None) for key, item in items.items()}
        try:
            read = arrays.read_all(wanted)
        except Exception:
            # Which array failed, read one at a time: the error names its key.
            for key, item in items.items():
                try:
                    arrays.read(orbax_name(key), getattr(item, "sharding", None))
                except Exception as e:
                    raise CheckpointError(self.path, f"{ARRAYS}/ could not be read ({reason(e)})", key=key) from None
            raise
        return {key: read[orbax_name(key)] for key in items}

    def load(self, targets: Mapping[str, Target], *, verify: bool = True) -> Dict[str, Any]:
        return self.consistently(lambda: self.load_once(targets, verify))

    def load_once(self, targets: Mapping[str, Target], verify: bool) -> Dict[str, Any]:
        missing = self.manifest.missing_checksums(targets) if verify else {}
        if missing:
            raise unchecked_error(self.path, list(missing))  # before anything is read
        items, after, out = {}, {}, {}
        self.open_entries(key for key, target in targets.items() if not empty(self.manifest.arrays[key]) and target.transform is None)
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
                continue
            sharding = target.sharding or default_sharding()
            if info.key_impl and not isinstance(sharding, KEY_DATA_SHARDINGS):
                # Key data has trailing dimensions, which only these shardings extend to.
                after[key], sharding = sharding, default_sharding()
            items[key] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

        restored = self.restore(items) if items else {}
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

        info = self.manifest.arrays[key]
        if empty(info):
            return np.zeros(info.storage_shape, orbax_dtype(info))
        self.check(key)
        return np.asarray(self.restore({key: jax.ShapeDtypeStruct(info.storage_shape, orbax_dtype(info))})[key])

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

        keys = list(self.manifest.arrays if keys is None else keys)
        return self.consistently(lambda: self.verify_once(keys))

    def verify_once(self, keys: List[str]) -> Dict[str, str]:
        problems = self.manifest.missing_checksums(keys)
        for key in keys:
            if key in problems:
                continue
            try:
                if self.mismatches({key: self.stored_host(key)}):
                    problems[key] = CHECKSUM_MISMATCH
            except CheckpointError as e:
                problems[key] = e.message
        return problems
