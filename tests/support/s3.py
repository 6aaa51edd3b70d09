"""A real S3 endpoint for tests: moto's server on 127.0.0.1 (a free port), with a bucket.

    with moto_server() as s3:                  # moto's ThreadedMotoServer, in this process
        store = s3.blob_store(prefix="t1")     # an S3BlobStore on the server's bucket
        s3.client().list_multipart_uploads(Bucket=s3.bucket)   # boto3, to look behind it

``tests/storage/conftest.py`` starts one per test session (the ``s3_server`` fixture); tests
keep apart by a prefix of their own. moto keeps every server's state in the process's one
set of backends, so each server gets a bucket with a fresh name.

:func:`moto_server_process` runs moto as a separate process instead, for measurements that
must not count the server's memory or CPU (``tracemalloc`` sees every thread of the test
process, and moto keeps the objects it is sent in memory).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

from keel.storage.backends import S3BlobStore
from tests.support.keel_process import free_port, stop_process

REGION = "us-east-1"
ACCESS_KEY_ID = "keel-test-access-key"
SECRET_ACCESS_KEY = "keel-test-secret-key"


@dataclass(frozen=True)
class S3TestServer:
    """How to reach a test S3 endpoint and its bucket."""

    endpoint_url: str
    bucket: str
    region: str = REGION
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY

    def blob_store(self, prefix: str = "", **options: Any) -> S3BlobStore:
        """An :class:`S3BlobStore` on this server's bucket (``options``: timeouts etc.)."""
        return S3BlobStore(
            endpoint_url=self.endpoint_url,
            region=self.region,
            bucket=self.bucket,
            prefix=prefix,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            **options,
        )

    def client(self) -> Any:
        """A synchronous boto3 S3 client of the server, to set up or inspect what the code
        under test cannot show (incomplete multipart uploads, raw keys)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def create_bucket(self) -> None:
        self.client().create_bucket(Bucket=self.bucket)


def _new_bucket_name() -> str:
    return f"keel-test-{uuid.uuid4().hex[:12]}"


@contextmanager
def moto_server() -> Iterator[S3TestServer]:
    """moto's threaded S3 server in this process, with a new bucket; stopped on exit."""
    # werkzeug logs every request at INFO: thousands of lines per run.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = S3TestServer(endpoint_url=f"http://127.0.0.1:{port}", bucket=_new_bucket_name())
        s3.create_bucket()
        yield s3
    finally:
        server.stop()


@contextmanager
def moto_server_process(*, start_timeout: float = 30.0) -> Iterator[S3TestServer]:
    """moto's S3 server as a child process (``python -m moto.server``), with a bucket."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        s3 = S3TestServer(endpoint_url=f"http://127.0.0.1:{port}", bucket=_new_bucket_name())
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                s3.create_bucket()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield s3
    finally:
        stop_process(process)
