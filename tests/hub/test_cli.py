"""``aifi hub hospital add`` and ``aifi hub serve``, as an operator runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from aifi.cli import app
from aifi.netutil import free_port

from .conftest import multipart


def _config(tmp_path: Path, port: int = 8000) -> Path:
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\nport = {port}\ndata_dir = "hub-data"\n', encoding="utf-8")
    return config


def test_hospital_add_prints_a_token_once_and_refuses_a_duplicate(tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = CliRunner()

    added = runner.invoke(app, ["hub", "hospital", "add", "Hospital A", "--config", str(config)])
    again = runner.invoke(app, ["hub", "hospital", "add", "Hospital A", "--config", str(config)])
    listed = runner.invoke(app, ["hub", "hospital", "list", "--config", str(config)])

    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert len(token) >= 43
    assert again.exit_code == 1
    assert "already registered" in again.output
    assert "Hospital A" in listed.stdout
    assert token not in listed.stdout
    assert token.encode() not in (tmp_path / "hub-data" / "hub.sqlite").read_bytes()


def test_serve_runs_uvicorn_on_the_configured_port(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    added = CliRunner().invoke(app, ["hub", "hospital", "add", "Hospital A", "-c", str(config)])
    token = added.stdout.strip()
    hub = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from aifi.cli import main; main()",
            "hub",
            "serve",
            "-c",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        response = _poll(f"http://127.0.0.1:{port}/tasks", token)
        assert response.status_code == 200
        assert response.json() == []
        hub.send_signal(signal.SIGTERM)
        output, _ = hub.communicate(timeout=30)
        assert hub.returncode in (0, -signal.SIGTERM), output.decode()
        assert b"hub stopped" in output
        assert b"alembic" not in output
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()


def _start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from aifi.cli import main; main()",
            "hub",
            "serve",
            "-c",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_tasks_survive_a_sigkill_of_the_hub(tmp_path: Path, study: tuple[str, list[Path]]) -> None:
    """Kill -9 while tasks are queued or running; the restarted hub completes each once."""
    study_uid, files = study
    port = free_port()
    config = _config(tmp_path, port)
    token = CliRunner().invoke(app, ["hub", "hospital", "add", "A", "-c", str(config)]).stdout
    auth = {"Authorization": f"Bearer {token.strip()}"}
    base = f"http://127.0.0.1:{port}"
    body, content_type = multipart([f.read_bytes() for f in files])
    sops = [f.stem for f in files]

    hub = _start(config)
    try:
        _poll(f"{base}/tasks", token.strip())
        stow = httpx.post(
            f"{base}/dicomweb/studies", content=body, headers={**auth, "Content-Type": content_type}
        )
        assert stow.status_code == 200
        task_ids = [
            httpx.post(
                f"{base}/tasks",
                json={
                    "client_task_id": f"edge-{n}",
                    "algorithm_id": "integrity-check",
                    "study_instance_uid": study_uid,
                    "sop_instance_uids": sops,
                },
                headers=auth,
            ).json()["id"]
            for n in range(4)
        ]
    finally:
        hub.kill()
        hub.wait()

    hub = _start(config)
    try:
        _poll(f"{base}/tasks", token.strip())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = httpx.get(f"{base}/tasks", headers=auth).json()
            if all(t["state"] in ("COMPLETED", "CANCELED") for t in listed):
                break
            time.sleep(0.1)
        assert sorted(t["id"] for t in listed) == sorted(task_ids)
        for task in listed:
            assert task["state"] == "COMPLETED", task["reason"]
            assert len(task["results"]) == 1
    finally:
        hub.terminate()
        hub.wait(timeout=30)


def _poll(url: str, token: str, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
