r"""Saving to object storage from a job of several processes: two real processes on
127.0.0.1 (``jax.distributed``, gloo), each uploading its own shards, against the
servers of ``object_servers.py`` started here (moto's S3 server, the GCS emulator).

The checks run in ``bucket_worker.py``; this test starts the job (:class:`processes.Job`:
a free port, a deadline, whatever is left killed at the end).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("gcp_storage_emulator")

from object_servers import BUCKET, serving
from processes import Job

WORKER = Path(__file__).with_name("bucket_worker.py")
DEADLINE = 180  # seconds for the whole job; it takes ~15 s
ENV = {"INOX_IO_TIMEOUT_S": "60"}  # a process that waits for a dead one fails, not hangs


def test_two_processes_save_and_restore_on_buckets(tmp_path):
    # Every check on S3; the round trips of the sharded and orbax layouts on GCS too.
    roots = [f"s3://{BUCKET}/processes", f"gs://{BUCKET}/processes"]
    with serving():  # its environment reaches the processes
        job = Job(WORKER, 2, roots, tmp_path / "logs", devices=2, name="bucket", env=ENV)
        try:
            codes = job.wait(DEADLINE)
        finally:
            job.kill()
    outputs = job.outputs()
    if codes != [0, 0] or not all(f"WORKER OK {i}" in out for i, out in enumerate(outputs)):
        pytest.fail(f"the job failed:\n{job.report()}")
