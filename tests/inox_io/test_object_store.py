r"""Checkpoints on object storage (gs://, s3://), against real servers of each protocol
started here on 127.0.0.1: moto's S3 server and gcp-storage-emulator's GCS server
(see ``object_servers.py``). Every layout and entry point, the commit protocol, and
the errors of a missing bucket, wrong credentials and a missing object."""

from __future__ import annotations


import re

from typing import Iterator

import jax
import numpy as np
import pytest

pytest.importorskip("moto.server")
pytest.importorskip("gcp_storage_emulator")

import inox_io

from inox_io.storage import locate
from inox_io.storage.bucket import bucket
from inox_io.storage.commit import DATA_SUFFIX, committed
from models import WeightSharingMLP, assert_tied
from object_servers import BUCKET, Servers, serving

SCHEMES = ["s3", "gs"]
#: name, save options: every layout (the HF index with several shards).
LAYOUTS = {
    "safetensors": ("model.safetensors", {}),
    "msgpack": ("model.msgpack", {}),
    "hf_index": ("model.safetensors.index.json", {"max_shard_size": 600}),
    "sharded": ("ckpt", {}),
    "orbax": ("ckpt", {"format": "orbax"}),
}


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with serving() as servers:
        yield servers


@pytest.fixture
def root(servers, request) -> str:
    r"""A fresh prefix of the test bucket, for the scheme the test is parametrized by."""

    callspec = getattr(request.node, "callspec", None)
    scheme = callspec.params.get("scheme", "s3") if callspec else "s3"
    return f"{scheme}://{BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}"


def keys(url: str) -> list:
    where = locate(url)
    return bucket(where).keys(where.key)


def model(seed: int = 0) -> WeightSharingMLP:
    return WeightSharingMLP(jax.random.key(seed), features=8)


def assert_same(restored: WeightSharingMLP, expected: WeightSharingMLP) -> None:
    assert_tied(restored)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_keeps_ties(root, scheme, layout):
    name, options = LAYOUTS[layout]
    url = f"{root}/{name}"
    tree = model()
    manifest = inox_io.save(url, tree, metadata={"step": 3}, **options)
    assert inox_io.inspect(url).arrays.keys() == manifest.arrays.keys()
    assert inox_io.inspect(url).metadata["step"] == 3
    assert inox_io.verify(url).ties == manifest.ties
    assert_same(inox_io.load(url, model(1)), tree)
    # One generation, committed by the record at the URL itself.
    generation, files, _ = committed(locate(url))
    prefix = f"{locate(url).key}{DATA_SUFFIX}/{generation}/"
    assert sorted(keys(url)) == sorted([locate(url).key, *(prefix + f for f in files)])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_convert_between_local_and_buckets(root, scheme, tmp_path):
    tree = model()
    inox_io.save(tmp_path / "a.msgpack", tree)
    inox_io.convert(tmp_path / "a.msgpack", f"{root}/b.safetensors")
    inox_io.convert(f"{root}/b.safetensors", f"{root}/c", format="orbax")
    inox_io.convert(f"{root}/c", tmp_path / "d.safetensors")
    assert_same(inox_io.load(tmp_path / "d.safetensors", model(1)), tree)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_replacing_save_removes_old_objects_and_leftovers(root, scheme):
    url = f"{root}/ckpt"
    inox_io.save(url, model(0))
    with pytest.raises(FileExistsError, match=f"{url} exists; pass overwrite=True"):
        inox_io.save(url, model(1))
    # What a save killed before its commit leaves: files of a generation nobody names.
    where = locate(url)
    bucket(where).put_many([(f"{where.key}{DATA_SUFFIX}/dead-beef/ckpt/manifest.json", b"partial")])
    old = committed(where)[0]
    inox_io.save(url, model(1), overwrite=True)
    new = committed(where)[0]
    assert new != old
    assert all(k == where.key or f"/{new}/" in k for k in keys(url)), keys(url)
    assert_same(inox_io.load(url, model(2)), model(1))


def test_failed_save_commits_nothing(root):
    url = f"{root}/model.safetensors"
    inox_io.save(url, model(0))
    with pytest.raises(TypeError):
        inox_io.save(url, model(1), overwrite=True, metadata={"bad": object()})
    assert_same(inox_io.load(url, model(1)), model(0))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_missing_checkpoint_and_bucket(root, scheme):
    url = f"{root}/nothing.safetensors"
    with pytest.raises(FileNotFoundError, match=f"{url}: no such checkpoint"):
        inox_io.load(url)
    nobucket = f"{scheme}://no-such-bucket-inox/x/model.safetensors"
    with pytest.raises(FileNotFoundError, match=f"{nobucket}.*bucket no-such-bucket-inox does not exist"):
        inox_io.save(nobucket, model())
    # The GCS emulator answers the listing of a missing bucket with a malformed response.
    expected = "no such checkpoint" if scheme == "gs" else "listing failed: bucket no-such-bucket-inox does not exist"
    with pytest.raises(FileNotFoundError, match=f"{nobucket}.*: {expected}"):
        inox_io.inspect(nobucket)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_missing_object_is_damage(root, scheme):
    url = f"{root}/ckpt"
    inox_io.save(url, model())
    where = locate(url)
    generation, files, _ = committed(where)
    victim = max(files, key=files.get)  # the arrays' data
    key = f"{where.key}{DATA_SUFFIX}/{generation}/{victim}"
    data = bucket(where).get(key)
    bucket(where).put_many([(key, data[: len(data) // 2])])
    with pytest.raises(inox_io.CheckpointError, match=f"{url}: a file is shorter than its commit record says"):
        inox_io.load(url, model(1))
    bucket(where).delete([key])
    with pytest.raises(inox_io.CheckpointError, match=f"{url}: generation {generation}: a committed file is missing"):
        inox_io.load(url, model(1))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_not_a_commit_record(root, scheme):
    url = f"{root}/model.safetensors"
    where = locate(url)
    bucket(where).put_many([(where.key, b"\x00not json")])
    with pytest.raises(inox_io.CheckpointError, match=f"{url}: not an inox_io commit record"):
        inox_io.load(url)


def test_wrong_credentials(root, monkeypatch):
    from moto import settings

    url = f"{root}/model.safetensors"
    inox_io.save(url, model())
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys from now on
    with pytest.raises(PermissionError, match=f"{url}: reading failed: access denied or no valid credentials"):
        inox_io.load(url)
    with pytest.raises(PermissionError, match="access denied or no valid credentials"):
        inox_io.save(f"{root}/other.safetensors", model())
    with pytest.raises(PermissionError, match=f"{root}/run.*: listing failed: access denied or no valid credentials"):
        inox_io.CheckpointManager(f"{root}/run").all_steps()  # not "no steps"


def test_credentials_from_the_shared_credentials_file(root, servers, tmp_path, monkeypatch):
    r"""With moto checking keys, those of a user it knows, given only in an AWS shared
    credentials file (``AWS_SHARED_CREDENTIALS_FILE``, profile ``AWS_PROFILE``), as
    boto3 and the AWS CLI read them: a load succeeds (the orbax layout's too, which
    tensorstore reads in the bucket itself); a profile with keys moto does not
    know is refused. (Saved before moto checks keys: it refuses the signature of
    tensorstore's prefix listings, which a save makes, whatever the keys.)"""

    import boto3
    from moto import settings

    iam = boto3.client(
        "iam", endpoint_url=servers.s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )  # fmt: skip
    iam.create_user(UserName="trainer")
    document = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
    policy = iam.create_policy(PolicyName="checkpoints", PolicyDocument=document)["Policy"]["Arn"]
    iam.attach_user_policy(UserName="trainer", PolicyArn=policy)
    keys = iam.create_access_key(UserName="trainer")["AccessKey"]
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[trainer]\naws_access_key_id = {keys['AccessKeyId']}\naws_secret_access_key = {keys['SecretAccessKey']}\n"
        "[stranger]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wrong\n"
    )
    url, orbax = f"{root}/model.safetensors", f"{root}/orbax"
    inox_io.save(url, model(3))
    inox_io.save(orbax, model(4), format="orbax")  # read in the bucket, by tensorstore itself
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "trainer")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys from now on
    assert_same(inox_io.load(url, model()), model(3))
    assert_same(inox_io.load(orbax, model()), model(4))

    monkeypatch.setenv("AWS_PROFILE", "stranger")
    with pytest.raises(PermissionError, match="access denied or no valid credentials"):
        inox_io.load(url, model())


class DenyingServer:
    r"""A GCS endpoint on 127.0.0.1 that answers every request as Google's does to a
    token it does not accept (the emulator accepts any): 401, ``UNAUTHENTICATED``."""

    def __init__(self):
        import http.server
        import json
        import threading

        body = json.dumps({"error": {"code": 401, "message": "Invalid Credentials", "status": "UNAUTHENTICATED"}}).encode()

        class Deny(http.server.BaseHTTPRequestHandler):
            def deny(self):
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = deny

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
        self.host = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_wrong_credentials_on_gcs(monkeypatch):
    denying = DenyingServer()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", denying.host)
    try:
        for url, call in [
            (f"gs://{BUCKET}/model.safetensors", lambda url: inox_io.load(url)),
            (f"gs://{BUCKET}/other.safetensors", lambda url: inox_io.save(url, model())),
            (f"gs://{BUCKET}/run", lambda url: inox_io.CheckpointManager(url).all_steps()),
        ]:
            with pytest.raises(PermissionError, match=f"{re.escape(url)}: .* failed: access denied or no valid credentials"):
                call(url)
    finally:
        denying.close()


def test_other_schemes_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="http://host/m.safetensors: unsupported URL scheme 'http'"):
        inox_io.save("http://host/m.safetensors", model())
    from pathlib import Path

    with pytest.raises(ValueError, match="a URL made into a local path"):
        inox_io.save(Path("s3://bucket/m.safetensors"), model())
    with pytest.raises(ValueError, match="ftp://host/run: unsupported URL scheme 'ftp'"):
        inox_io.CheckpointManager("ftp://host/run")
    with pytest.raises(ValueError, match="a URL made into a local path"):
        inox_io.CheckpointManager(Path("gs://bucket/run"))
    assert list(tmp_path.iterdir()) == []  # no folder named 's3:', 'gs:' or 'ftp:'


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("item_format", [None, "orbax"])
def test_manager_save_restore_retention(root, scheme, item_format):
    from inox_io import CheckpointManager

    with CheckpointManager(root, max_to_keep=2, item_format=item_format) as manager:
        for step in range(1, 5):
            manager.save(step, {"model": model(step), "data": {"offset": 32 * step}}, metrics={"loss": 1.0 / step})
        manager.wait_until_finished()
        assert manager.all_steps() == [3, 4]
        restored = manager.restore(like={"model": model(0)})
        assert restored["data"] == {"offset": 128}
        assert_same(restored["model"], model(4))
        manager.delete(3)
    reader = CheckpointManager(root, read_only=True)
    assert reader.all_steps() == [4] and reader.metrics(4) == {"loss": 0.25}
    assert_same(reader.restore(4, like={"model": model(0)})["model"], model(4))
    assert all(k.startswith(f"{locate(root).key}/4") for k in keys(root)), keys(root)
    with pytest.raises(FileNotFoundError, match=f"{root}/3: no complete step 3"):
        reader.metadata(3)


def test_manager_start_removes_leftovers(root):
    from inox_io import CheckpointManager

    with CheckpointManager(root, async_save=False) as manager:
        manager.save(1, {"model": model()})
    where = locate(root)
    dead = [f"{where.key}/2.inox-data/dead-beef/2/model.safetensors", f"{where.key}/1.inox-data/dead-beef/1/x"]
    bucket(where).put_many([(k, b"partial") for k in dead])
    with CheckpointManager(root) as manager:
        assert manager.all_steps() == [1]
        assert not set(dead) & set(keys(root))
        assert_same(manager.restore(like={"model": model(1)})["model"], model())


def test_command_line(root, capsys):
    from inox_io import CheckpointManager
    from inox_io.cli import main

    url = f"{root}/model.safetensors"
    inox_io.save(url, model())
    assert main(["inspect", url]) == 0
    assert main(["verify", url]) == 0 and "every checksum matches" in capsys.readouterr().out
    assert main(["convert", url, f"{root}/ckpt", "--format", "orbax"]) == 0
    assert main(["convert", url, f"{root}/ckpt"]) == 1 and f"{root}/ckpt already exists" in capsys.readouterr().err
    assert_same(inox_io.load(f"{root}/ckpt", model(1)), model())
    capsys.readouterr()
    assert main(["steps", f"{root}/ckpt"]) == 2  # its commit record says so, as a local manifest does
    assert "is a checkpoint, not a CheckpointManager directory" in capsys.readouterr().err
    assert main(["steps", f"{root}/nothing"]) == 1
    assert "not a CheckpointManager directory" in capsys.readouterr().err
    with CheckpointManager(f"{root}/run", async_save=False) as manager:
        manager.save(5, {"model": model(), "data": {"offset": 3}})
    capsys.readouterr()
    assert main(["steps", f"{root}/run"]) == 0 and "1 complete step" in capsys.readouterr().out
    assert main(["inspect", f"{root}/run/5"]) == 0 and "step 5" in capsys.readouterr().out
    assert main(["verify", f"{root}/run/5"]) == 0 and "step 5, 1 array item" in capsys.readouterr().out
    assert main(["inspect", "ftp://host/m.safetensors"]) == 2
    assert "unsupported URL scheme 'ftp'" in capsys.readouterr().err


def test_reader_retries_when_a_save_replaces_what_it_reads(root, monkeypatch):
    from inox_io.storage.bucket import Bucket

    url = f"{root}/model.safetensors"
    inox_io.save(url, model(0))
    get_ranges, calls = Bucket.get_ranges, []

    def replaced_meanwhile(self, ranges):
        if not calls:  # the reader has the old record; a save commits and deletes its files
            inox_io.save(url, model(1), overwrite=True)
        calls.append(ranges)
        return get_ranges(self, ranges)

    monkeypatch.setattr(Bucket, "get_ranges", replaced_meanwhile)
    assert_same(inox_io.load(url, model(2)), model(1))
    # The old generation's files were gone: read again from the new record.
    generations = [key.split("/")[-2] for call in calls for key, _, _ in call]
    assert generations[0] != generations[-1] and len(set(generations)) == 2


@pytest.mark.parametrize("scheme", SCHEMES)
def test_large_files_go_in_several_objects(root, scheme, monkeypatch):
    r"""Files over OBJECT_BYTES are split (each upload holds one object), read back with
    ranged requests of PART_BYTES, at most WINDOW_BYTES at a time: small sizes here."""

    from inox_io.storage import commit

    monkeypatch.setattr(commit, "OBJECT_BYTES", 2048)
    monkeypatch.setattr(commit, "PART_BYTES", 1024)
    monkeypatch.setattr(commit, "WINDOW_BYTES", 4096)
    url = f"{root}/model.safetensors"
    tree = WeightSharingMLP(jax.random.key(0), features=32)  # ~17 KiB of arrays
    inox_io.save(url, tree)
    size = committed(locate(url)).files["model.safetensors"]
    parts = [k for k in keys(url) if ".inox-part-" in k]
    assert len(parts) == -(-size // 2048) - 1 >= 3
    assert_same(inox_io.load(url, WeightSharingMLP(jax.random.key(1), features=32)), tree)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_sharded_load_fetches_only_the_bytes_it_reads(root, scheme):
    r"""The data files of the sharded layout are fetched in the byte ranges the reader
    reads: loading one of two 4 MiB arrays fetches that array's bytes, not the other's."""

    from inox_io.storage.ranges import FETCHED

    url = f"{root}/sharded"
    a, b = np.arange(2**20, dtype=np.float32), np.ones(2**20, np.float32)
    inox_io.save(url, {"a": a, "b": b})
    before = FETCHED.value
    with pytest.warns(UserWarning, match=re.escape(f"{url}: loaded partially; ['b']: in the file but not in like")):
        out = inox_io.load(url, {"a": jax.ShapeDtypeStruct(a.shape, a.dtype)}, strict=False)
    assert np.array_equal(out["a"], a)
    assert FETCHED.value - before == a.nbytes  # the whole of a's 1 MiB chunks, nothing of b's
    before = FETCHED.value
    assert sorted(inox_io.verify(url).arrays) == ["['a']", "['b']"]
    assert FETCHED.value - before == a.nbytes + b.nbytes


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", ["model.safetensors", "model.msgpack", "model.safetensors.index.json"])
def test_a_single_file_load_fetches_only_the_bytes_it_reads(root, scheme, name):
    r"""Single files (and an index's safetensors shards) are fetched in ranges too:
    ``inspect`` fetches the header's 1 MiB block, a load of one of two 4 MiB arrays that
    array's blocks, ``verify`` every byte once (each call reads the checkpoint anew)."""

    from inox_io.storage.ranges import FETCHED

    url = f"{root}/{name}"
    a, b = np.arange(2**20, dtype=np.float32), np.ones(2**20, np.float32)
    inox_io.save(url, {"a": a, "b": b})
    size = sum(n for file, n in committed(locate(url))[1].items() if not file.endswith(".json"))
    before = FETCHED.value
    assert sorted(inox_io.inspect(url).arrays) == ["['a']", "['b']"]
    assert 0 < FETCHED.value - before <= 2 * 2**20  # a header block per file, at most
    before = FETCHED.value
    with pytest.warns(UserWarning, match="loaded partially"):
        out = inox_io.load(url, {"a": jax.ShapeDtypeStruct(a.shape, a.dtype)}, strict=False)
    assert np.array_equal(out["a"], a)
    assert a.nbytes <= FETCHED.value - before <= a.nbytes + 2 * 2**20  # blocks: rounded out
    before = FETCHED.value
    inox_io.verify(url)
    assert FETCHED.value - before == size  # never a block twice


def test_an_index_fetches_its_shards_headers_at_once(root, monkeypatch):
    r"""Opening an index on a bucket fetches the header blocks of all its shards in one
    batch of requests, not one shard after another (a round trip each)."""

    from inox_io.storage.bucket import Bucket

    url = f"{root}/model.safetensors.index.json"
    inox_io.save(url, {"a": np.ones(2**18, np.float32), "b": np.ones(2**18, np.float32), "c": np.ones(2**18, np.float32)}, max_shard_size=2**20)
    assert sum(name.endswith(".safetensors") for name in committed(locate(url))[1]) == 3
    get_ranges, batches = Bucket.get_ranges, []
    monkeypatch.setattr(Bucket, "get_ranges", lambda self, ranges: batches.append(ranges) or get_ranges(self, ranges))
    assert sorted(inox_io.inspect(url).arrays) == ["['a']", "['b']", "['c']"]
    assert len(batches) == 2, batches  # the index (and a byte of each shard), then the headers


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_orbax_load_reads_its_objects_in_place(root, scheme, monkeypatch):
    r"""The data files of the orbax layout (OCDBT's, each under the 64 MiB of an object)
    are not downloaded: tensorstore reads the chunks a load needs in the bucket. Only
    the small metadata files, and a byte of each data file, are fetched."""

    from inox_io.storage.bucket import Bucket

    url = f"{root}/orbax"
    a = np.random.default_rng(0).random(2**21).astype(np.float32)  # 8 MiB, incompressible
    inox_io.save(url, {"a": a, "b": np.ones(4, np.float32)}, format="orbax")
    fetched = []
    get_ranges = Bucket.get_ranges
    monkeypatch.setattr(Bucket, "get_ranges", lambda self, ranges: fetched.extend(get_ranges(self, ranges)) or fetched[-len(ranges):])
    out = inox_io.load(url, {"a": jax.ShapeDtypeStruct(a.shape, a.dtype), "b": jax.ShapeDtypeStruct((4,), np.float32)})
    np.testing.assert_array_equal(out["a"], a)
    assert sum(len(value) for value in fetched) < 64 * 2**10, sum(len(value) for value in fetched)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_orbax_checkpoint_with_files_in_parts_is_fetched_first(root, scheme, monkeypatch):
    r"""Where a file of ``arrays/`` lies in several objects (tensorstore cannot read it
    in place), the data files are fetched whole before the load reads them locally."""

    from inox_io.storage import commit

    monkeypatch.setattr(commit, "OBJECT_BYTES", 2048)
    monkeypatch.setattr(commit, "PART_BYTES", 1024)
    url = f"{root}/orbax-parts"
    a = np.random.default_rng(1).random(2**14).astype(np.float32)  # 64 KiB
    inox_io.save(url, {"a": a}, format="orbax")
    assert any(".inox-part-" in k for k in keys(url))
    np.testing.assert_array_equal(inox_io.load(url, {"a": jax.ShapeDtypeStruct(a.shape, a.dtype)})["a"], a)
    assert sorted(inox_io.verify(url).arrays) == ["['a']"]


def test_an_orbax_load_replaced_while_it_reads_says_so(root, monkeypatch):
    r"""A load reading an orbax checkpoint in its bucket while a newer save replaces it
    (and deletes its objects) is told to read again, not that the checkpoint is damaged;
    the next load reads the new one."""

    from inox_io.formats.orbax_arrays import OrbaxArrays

    url = f"{root}/orbax-replaced"
    inox_io.save(url, model(0), format="orbax")
    read_all = OrbaxArrays.read_all

    def replaced_meanwhile(self, wanted):
        inox_io.save(url, model(1), overwrite=True, format="orbax")
        return read_all(self, wanted)

    monkeypatch.setattr(OrbaxArrays, "read_all", replaced_meanwhile)
    with pytest.raises(inox_io.CheckpointError, match="replaced by a newer save while it was read; read it again"):
        inox_io.load(url, model(2))
    monkeypatch.setattr(OrbaxArrays, "read_all", read_all)
    assert_same(inox_io.load(url, model(2)), model(1))
