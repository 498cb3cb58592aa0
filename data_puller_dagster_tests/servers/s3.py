"""pytest fixtures for a real S3 server: moto's standalone server (`moto[server]`, in the dev extra).

`s3_server` (session): one `python -m moto.server` on a free loopback port, polled until it answers,
stopped afterwards. Requests are not authenticated by default (any key is accepted); a per-session
random key id and secret are still sent, so the redaction tests have real credentials to look for.
`S3Server.puts_denied` turns moto's IAM enforcement on for a block, with a fresh user whose policy
refuses PUTs under one prefix: a real, server-side refusal midway through a write. Without moto the
tests skip locally and FAIL with CI=true.

`s3_parquet_destination` (function): a ParquetDestination on `s3://<fresh bucket>/lake`, the bucket
emptied and deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster.io.destinations.s3_objects import s3_storage_options

REGION = "us-east-1"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    key_id: str
    secret: str
    log: Path

    @property
    def host_port(self) -> str:
        return self.endpoint.removeprefix("http://")

    def storage_options(self, key_id: str | None = None, secret: str | None = None) -> dict[str, Any]:
        return s3_storage_options(self.endpoint, key_id or self.key_id, secret or self.secret, REGION)

    def client(self, service: str = "s3", key_id: str | None = None, secret: str | None = None) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id or self.key_id,
            aws_secret_access_key=secret or self.secret,
            region_name=REGION,
        )

    def create_bucket(self) -> str:
        name = f"dp-test-{os.getpid()}-{os.urandom(4).hex()}"
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        s3 = self.client()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Every key in the bucket under `prefix` -> its ETag."""
        out: dict[str, str] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        return out

    @contextmanager
    def puts_denied(self, bucket: str, pattern: str) -> Iterator[dict[str, Any]]:
        """Storage options of a fresh IAM user allowed everything on S3 but PutObject on keys of
        `bucket` matching `pattern` (IAM wildcards), with the server enforcing IAM for the block.

        moto checks IAM only after `/moto-api/reset-auth` (a server-wide switch): inside the block the
        session's own unauthenticated key is refused too, so only the yielded options work there.
        """
        iam = self.client("iam")
        user = f"dp-denied-{os.urandom(4).hex()}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/{pattern}"},
            ],
        }
        iam.put_user_policy(UserName=user, PolicyName="deny-puts", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        try:
            yield self.storage_options(key["AccessKeyId"], key["SecretAccessKey"])
        finally:
            requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
            iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
            iam.delete_user_policy(UserName=user, PolicyName="deny-puts")
            iam.delete_user(UserName=user)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the S3 store must be tested for real)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    try:
        import moto.server  # noqa: F401 - only to know it is installed
    except ImportError as e:
        _unavailable(f"moto[server] is not installed ({e}); pip install -e '.[dev]'")
    tmp = Path(tempfile.mkdtemp(prefix="dp-moto-"))
    log = tmp / "moto.log"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = S3Server(
        f"http://127.0.0.1:{port}", f"DPTEST{os.urandom(6).hex().upper()}", os.urandom(16).hex(), log
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                _unavailable(f"moto server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if requests.get(f"{server.endpoint}/moto-api/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                _unavailable(f"moto server on port {port} did not answer within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh bucket, emptied and deleted afterwards."""
    name = s3_server.create_bucket()
    yield name
    s3_server.delete_bucket(name)


@pytest.fixture
def s3_parquet_destination(s3_server: S3Server, s3_bucket: str) -> ParquetDestination:
    return ParquetDestination(f"s3://{s3_bucket}/lake", storage_options=s3_server.storage_options())
