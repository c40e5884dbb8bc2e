"""A hub as its own process (so it can be killed) and an edge, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aifi.netutil import free_port

HUB_ON_BOTH_DATABASES = pytest.mark.parametrize(
    "hub", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
"""Mark a test that uses ``hub`` to run on the embedded SQLite file and on PostgreSQL."""


class _Killable:
    """A program of ours in a subprocess: stopped politely, or killed as in a power cut."""

    process: subprocess.Popen[bytes] | None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a power cut."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class HubProcess(_Killable):
    """``aifi hub serve`` in a subprocess, restartable on the same port and data folder."""

    def __init__(self, folder: Path, database_url: str | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.database_url = database_url  # None: the embedded SQLite file in data_dir
        self.config = folder / "hub.toml"
        self.config.write_text(
            f'[hub]\ndata_dir = "data"\nport = {self.port}\nworkers = 2\nlog_level = "warning"\n'
            + (f'database_url = "{database_url}"\n' if database_url else ""),
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "hub.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def add_hospital(self, name: str, subscribe: str = "integrity-check") -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "aifi",
                "hub",
                "hospital",
                "add",
                name,
                "--config",
                str(self.config),
                "--subscribe",
                subscribe,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aifi", "hub", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hub exited: {self.log.read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("hub did not start in 30 s")


class EdgeProcess(_Killable):
    """``aifi edge serve --config edge.toml`` in a subprocess, killable like the hub."""

    def __init__(self, folder: Path, config_text: str) -> None:
        self.folder = folder
        self.config = folder / "edge.toml"
        self.config.write_text(config_text, encoding="utf-8")
        self.log = folder / "edge.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, dicom_port: int) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aifi", "edge", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"edge exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", dicom_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("edge did not start listening in 30 s")


@pytest.fixture
def hub(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HubProcess]:
    """The hub on SQLite; on PostgreSQL where a test asks with ``HUB_ON_BOTH_DATABASES``."""
    folder = tmp_path / "hub"
    folder.mkdir()
    database = getattr(request, "param", "sqlite")
    url = request.getfixturevalue("postgres_database") if database == "postgresql" else None
    process = HubProcess(folder, url)
    process.start()
    yield process
    process.stop()
