"""A real S3 API for tests: moto's server on a free port of 127.0.0.1, nothing else contacted.

`s3_server` (a pytest fixture, module scope) starts `moto.server.ThreadedMotoServer`, points
every S3 client of this process and its children at it through `AWS_ENDPOINT_URL` with dummy
credentials, and yields an `S3Server` (endpoint, a boto3 client, `bucket(name)` to create a
bucket, `env` for subprocesses). Clients are never patched: boto3, s3fs and pyarrow talk HTTP to
the server as they would to AWS. Use it with `from _s3_helpers import s3_server  # noqa: F401`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import pytest

HOST = "127.0.0.1"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, local, bucket: str, key: str) -> str:
        self.client().upload_file(str(local), bucket, key)
        return f"s3://{bucket}/{key}"


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    endpoint = f"http://{HOST}:{port}"
    env = dict(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()  # an earlier instance knows no endpoint
    except ImportError:
        pass
    try:
        yield S3Server(endpoint, env)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def upload_tree(server: S3Server, local, bucket: str, prefix: str) -> int:
    """Every regular file under `local` as `prefix/<relative path>` (a store has no links)."""
    from pathlib import Path

    client = server.client()
    count = 0
    for path in sorted(Path(local).rglob("*")):
        if path.is_file() and not path.is_symlink():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
            count += 1
    return count
