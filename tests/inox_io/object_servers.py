r"""Object-store servers on 127.0.0.1 for the tests and benchmarks: moto's S3 server
and gcp-storage-emulator's GCS server, each with one bucket, and the environment that
points inox_io (and any other tool following each cloud's conventions) at them.

Example:
    >>> sorted(environment(s3='http://127.0.0.1:1', gcs='127.0.0.1:2'))
    ['AWS_ACCESS_KEY_ID', 'AWS_ENDPOINT_URL', 'AWS_REGION', 'AWS_SECRET_ACCESS_KEY', 'STORAGE_EMULATOR_HOST']
"""

from __future__ import annotations

__all__ = ["BUCKET", "Servers", "environment", "serving"]

import contextlib
import http.server
import logging
import os

from typing import Dict, Iterator

BUCKET = "inox-test"  #: The bucket each server holds.


def environment(s3: str, gcs: str) -> Dict[str, str]:
    r"""The variables that point clients at the servers (moto accepts any keys)."""

    return {
        "AWS_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "STORAGE_EMULATOR_HOST": gcs,
    }


def _with_generation_headers() -> None:
    r"""Makes the GCS emulator send an object's generation with its bytes
    (``x-goog-generation``), as Google's servers do: tensorstore's OCDBT driver, which
    reads orbax folders in the bucket, needs it, and refuses a read without one."""

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    original = objects.download
    if getattr(original, "sends_generation", False):
        return

    def download(request, response, storage, *args, **kwargs):
        try:
            found = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = found["generation"]
        except NotFound:
            pass  # the download answers it
        original(request, response, storage, *args, **kwargs)

    download.sends_generation = True
    objects.download = download  # what the JSON API's reads (alt=media) call
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler is original:
                handlers[method] = download


class Servers:
    r"""Both servers, started in this process' threads, each with :data:`BUCKET`."""

    def __init__(self):
        import boto3
        from gcp_storage_emulator.server import create_server
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.s3_endpoint = f"http://{host}:{port}"
        # The emulator serves one request at a time, and its listen backlog (5) drops the
        # connections of more concurrent requests: each then waits a 1 s SYN retransmit.
        http.server.HTTPServer.request_queue_size = 128
        _with_generation_headers()
        self.gcs = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
        self.gcs.start()
        self.gcs_host = f"127.0.0.1:{self.gcs._api._httpd.server_port}"
        client = boto3.client(
            "s3", endpoint_url=self.s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1",
        )  # fmt: skip
        client.create_bucket(Bucket=BUCKET)
        self.environment = environment(self.s3_endpoint, self.gcs_host)

    def stop(self) -> None:
        self.moto.stop()
        self.gcs.stop()


#: What inox_io sets for the GCS emulator (see inox_io.storage.bucket), restored too.
_SET_BY_INOX_IO = ["TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING"]


@contextlib.contextmanager
def serving() -> Iterator[Servers]:
    r"""Both servers, with their environment in :data:`os.environ` (for this process
    and the processes it starts), as it was before afterwards."""

    servers = Servers()
    saved = {name: os.environ.get(name) for name in [*servers.environment, *_SET_BY_INOX_IO]}
    os.environ.update(servers.environment)
    try:
        yield servers
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        servers.stop()
