"""A real S3 API for the store suite: moto's server on 127.0.0.1, one per session, a fresh bucket per test.

Nothing here leaves 127.0.0.1: the fake credentials and the endpoint are set in the environment for the
whole session (so even a boto3 client built without an endpoint talks to moto), shared AWS config files and
the EC2 metadata service are switched off, and proxies are bypassed for 127.0.0.1.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

FAKE_ACCESS_KEY_ID = "nluflow-test-key-id"
FAKE_SECRET_ACCESS_KEY = "nluflow-test-secret-do-not-print"
REGION = "us-east-1"

_bucket_numbers = itertools.count()


@dataclass(frozen=True)
class MotoS3:
    """Where the session's moto server listens, and how to build a client for it."""

    endpoint_url: str
    access_key_id: str = FAKE_ACCESS_KEY_ID
    secret_access_key: str = FAKE_SECRET_ACCESS_KEY
    region: str = REGION

    def client(self, **config: Any) -> S3Client:
        settings: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": 2}, "connect_timeout": 5}
        settings.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(**settings),
        )


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_ACCESS_KEY)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free port
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
            yield MotoS3(endpoint)
        finally:
            server.stop()


@pytest.fixture
def s3_client(moto_s3: MotoS3) -> S3Client:
    """A client of its own per test, so event hooks a test registers do not leak into the next one."""
    return moto_s3.client()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> Iterator[str]:
    """A new, empty bucket; emptied and deleted afterwards."""
    client = moto_s3.client()
    name = f"nluflow-test-{next(_bucket_numbers)}"
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})  # type: ignore[typeddict-item]
    client.delete_bucket(Bucket=name)
