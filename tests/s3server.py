"""A local S3 server (moto) on 127.0.0.1 for the lake tests, started once per run on first use.

moto enforces conditional writes (If-None-Match), which Delta commits on S3 rely on, so the
two-writer guarantees are tested for real. Each test gets its own prefix in one bucket.
"""

from __future__ import annotations

import logging
import uuid

import boto3
from moto.server import ThreadedMotoServer

BUCKET = "stratum-test-lake"
ACCESS_KEY = "test-key"  # noqa: S105 - moto accepts any credentials
SECRET_KEY = "test-secret"  # noqa: S105


class LocalS3:
    def __init__(self) -> None:
        # Every request would otherwise be logged (and captured) by werkzeug.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client().create_bucket(Bucket=BUCKET)

    @property
    def options(self) -> dict[str, str]:
        """The environment a stratum process needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def fresh_root(self) -> str:
        return f"s3://{BUCKET}/{uuid.uuid4().hex}"

    def stop(self) -> None:
        self.server.stop()
