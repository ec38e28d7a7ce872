r"""The bytes of an object store, through tensorstore's ``s3`` and ``gcs`` key-value
drivers (the storage engine orbax uses too): get, ranged get, put, list and delete
keys of one bucket, each failure an error naming the URL and what failed.

Configuration follows each cloud's conventions, read when a bucket is first opened:

* S3: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (an S3-compatible server),
  ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, and the credentials of the AWS default
  chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
  ``~/.aws/credentials``, instance roles).
* GCS: application default credentials; ``STORAGE_EMULATOR_HOST`` points at an
  emulator, without credentials.

Example:
    >>> spec(ObjectURL('s3', 'bucket', 'x'), {'AWS_ENDPOINT_URL': 'http://127.0.0.1:9000'})
    {'driver': 's3', 'bucket': 'bucket', 'endpoint': 'http://127.0.0.1:9000', 'aws_region': 'us-east-1'}
    >>> spec(ObjectURL('gs', 'bucket', 'x'), {})
    {'driver': 'gcs', 'bucket': 'bucket'}
"""

from __future__ import annotations

__all__ = ["Bucket", "bucket", "spec", "storage_error"]

import os
import threading

from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from .location import SCHEMES, ObjectURL


def spec(url: ObjectURL, environ: Mapping[str, str]) -> Dict[str, Any]:
    r"""The tensorstore kvstore spec of :py:`url`'s bucket, from the environment."""

    out: Dict[str, Any] = {"driver": SCHEMES[url.scheme], "bucket": url.bucket}
    if url.scheme == "s3":
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
        if endpoint:
            out["endpoint"] = endpoint
            # tensorstore needs a region with an endpoint; S3-compatible servers ignore it.
            region = region or "us-east-1"
        if region:
            out["aws_region"] = region
        credentials = _shared_credentials(environ)
        if credentials is not None:
            out["context"] = {"aws_credentials": credentials}
    return out


def _shared_credentials(environ: Mapping[str, str]) -> Dict[str, str] | None:
    r"""The profile of the AWS shared credentials file to sign with, where the
    environment holds no keys and the file exists (``AWS_SHARED_CREDENTIALS_FILE``, else
    ``~/.aws/credentials``; profile ``AWS_PROFILE``, else ``default``), as boto3 and the
    AWS CLI choose it: tensorstore's default chain does not read the file itself.

    Example:
        >>> _shared_credentials({'AWS_ACCESS_KEY_ID': 'AKIA...', 'AWS_PROFILE': 'p'}) is None
        True
    """

    home = environ.get("HOME", "")
    path = environ.get("AWS_SHARED_CREDENTIALS_FILE") or (home and os.path.join(home, ".aws", "credentials"))
    if environ.get("AWS_ACCESS_KEY_ID") or not path or not os.path.isfile(path):
        return None
    config = environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")
    # config_file too: without it, tensorstore fails to create the provider.
    return {"type": "profile", "profile": environ.get("AWS_PROFILE") or "default", "credentials_file": path, "config_file": config}


def _gcs_emulator(environ: os._Environ) -> None:
    r"""Points tensorstore's gcs driver at ``STORAGE_EMULATOR_HOST`` (the variable
    Google's client libraries read), without credentials: tensorstore reads its own
    variables for both when a bucket is opened, ``TENSORSTORE_GCS_HTTP_URL`` (which
    ``STORAGE_EMULATOR_HOST`` overrides) and a fixed token."""

    host = environ.get("STORAGE_EMULATOR_HOST")
    if host:
        environ["TENSORSTORE_GCS_HTTP_URL"] = host if "://" in host else f"http://{host}"
        environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "anonymous")


def storage_error(url: ObjectURL | str, error: BaseException, doing: str) -> OSError:
    r"""The error of a failed request, naming the URL and what failed: no bucket
    (:class:`FileNotFoundError`), no or wrong credentials, access denied
    (:class:`PermissionError`), anything else (:class:`OSError`).

    Example:
        >>> storage_error(ObjectURL('s3', 'b', 'm'), ValueError('NOT_FOUND: NoSuchBucket: ...'), 'writing')
        FileNotFoundError('s3://b/m: writing failed: bucket b does not exist (NOT_FOUND: NoSuchBucket: ...)')
    """

    text = str(error)
    brief = text if len(text) <= 300 else text[:300] + "..."
    bucket = url.bucket if isinstance(url, ObjectURL) else "?"
    denied = ("PERMISSION_DENIED", "UNAUTHENTICATED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
              "http_response_code='403'", "http_response_code='401'", "credentials")  # fmt: skip
    if "NoSuchBucket" in text or (doing != "reading" and text.startswith("NOT_FOUND")):
        return FileNotFoundError(f"{url}: {doing} failed: bucket {bucket} does not exist ({brief})")
    if any(word in text for word in denied):
        return PermissionError(
            f"{url}: {doing} failed: access denied or no valid credentials ({brief}); docs/guide.md, "
            "'Checkpoints on object storage', names the variables each cloud reads"
        )
    return OSError(f"{url}: {doing} failed: {brief}")


class Bucket:
    r"""One bucket, its keys read and written through a tensorstore kvstore.

    Every method takes keys (no bucket, no scheme) and waits for its requests; the
    ``*_many`` ones issue all their requests at once, tensorstore bounding how many
    are in flight (its ``*_request_concurrency`` resources).
    """

    def __init__(self, url: ObjectURL):
        import tensorstore as ts

        self.url = ObjectURL(url.scheme, url.bucket, "")
        self._ts = ts
        if url.scheme == "gs":
            _gcs_emulator(os.environ)
        self.spec = spec(url, os.environ)
        try:
            self.store = ts.KvStore.open(self.spec).result()
        except Exception as e:
            raise storage_error(self.url, e, "opening the bucket") from None

    def kvstore(self, prefix: str) -> Dict[str, Any]:
        r"""The tensorstore kvstore spec of the keys under :py:`prefix`, for a reader
        that opens them itself (now: for the GCS emulator, tensorstore reads where it
        is when it opens the kvstore, and a bucket opened since may have pointed it
        elsewhere)."""

        if self.url.scheme == "gs":
            _gcs_emulator(os.environ)
        return {**self.spec, "path": prefix}

    def _wait(self, futures: Sequence[Any], keys: Sequence[str], doing: str) -> List[Any]:
        out = []
        for future, key in zip(futures, keys):
            try:
                out.append(future.result())
            except Exception as e:
                raise storage_error(self.url / key, e, doing) from None
        return out

    def get(self, key: str) -> bytes | None:
        r"""The value of :py:`key`, or :py:`None` if there is no such object."""

        result = self._wait([self.store.read(key)], [key], "reading")[0]
        return result.value if result.state == "value" else None

    def get_ranges(self, ranges: Sequence[Tuple[str, int, int]]) -> List[bytes | None]:
        r"""The bytes :py:`[start, stop)` of each :py:`(key, start, stop)`, all
        requested at once (:py:`None` for a missing object)."""

        futures = [self.store.read(key, byte_range=slice(start, stop)) for key, start, stop in ranges]
        results = self._wait(futures, [key for key, _, _ in ranges], "reading")
        return [r.value if r.state == "value" else None for r in results]

    def put_many(self, items: Iterable[Tuple[str, bytes]]) -> None:
        r"""Writes each :py:`(key, value)`, all requested at once."""

        items = list(items)
        futures = [self.store.write(key, value) for key, value in items]
        self._wait(futures, [key for key, _ in items], "writing")

    def keys(self, prefix: str) -> List[str]:
        r"""The keys that start with :py:`prefix`, sorted."""

        found = self._wait([self.store.list(self._range(prefix))], [prefix], "listing")[0]
        # Filtered here too: the GCS emulator ignores the range and lists the bucket.
        keys = sorted(k for k in (k.decode() for k in found) if k.startswith(prefix))
        if not keys:
            # tensorstore's gcs driver answers a listing it was refused (401, 403) with
            # no keys: a read of one key says whether the listing was really empty.
            probe = prefix or "inox_io-probe"
            self._wait([self.store.read(probe)], [probe], "listing")
        return keys

    def delete(self, keys: Iterable[str]) -> None:
        r"""Deletes each key (missing ones too)."""

        keys = list(keys)
        # One key per request (a write of None): a range delete lists the range first,
        # which the GCS emulator answers with every key of the bucket.
        self._wait([self.store.write(k, None) for k in keys], keys, "deleting")

    def _range(self, prefix: str) -> Any:
        if not prefix:
            return self._ts.KvStore.KeyRange()
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the first key past the prefix
        return self._ts.KvStore.KeyRange(prefix, end)


#: The variables that say which credentials (or server) a bucket is opened with,
#: besides what :func:`spec` holds: tensorstore reads them itself, when it opens one.
_CONFIGURATION = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
)  # fmt: skip

_buckets: Dict[Tuple[str, str, str], Bucket] = {}
_lock = threading.Lock()


def bucket(url: ObjectURL) -> Bucket:
    r"""The :class:`Bucket` of :py:`url`, opened once per configuration."""

    # Opened again where the environment now says other credentials or servers.
    chosen = [os.environ.get(name, "") for name in _CONFIGURATION]
    key = (url.scheme, url.bucket, repr(sorted(spec(url, os.environ).items())) + repr(chosen))
    with _lock:
        if key not in _buckets:
            _buckets[key] = Bucket(url)
        return _buckets[key]
