"""``aifi hub hospital add`` and ``aifi hub serve``, as an operator runs them.

Each test runs on the SQLite file and on PostgreSQL (the ``database_url``
fixture puts the URL in ``AIFI_HUB_DATABASE_URL``, which the commands read
over the hub.toml the test writes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from aifi.cli import app
from aifi.hub.db import make_engine
from aifi.netutil import free_port
from peers.postgres import pg_dump

from .conftest import multipart


def _config(tmp_path: Path, port: int = 8000) -> Path:
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\nport = {port}\ndata_dir = "hub-data"\n', encoding="utf-8")
    return config


def _stored(tmp_path: Path, database_url: str | None) -> bytes:
    """Everything the hub's database holds: the SQLite file's bytes, or ``pg_dump``."""
    if database_url:
        return pg_dump(database_url)
    return (tmp_path / "hub-data" / "hub.sqlite").read_bytes()


def _sql(tmp_path: Path, database_url: str | None, statement: str) -> object:
    """Run ``statement`` on the hub's database as someone with database access would."""
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'hub-data' / 'hub.sqlite'}")
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def test_hospital_add_prints_a_token_once_and_refuses_a_duplicate(
    tmp_path: Path, database_url: str | None
) -> None:
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
    assert token.encode() not in _stored(tmp_path, database_url)


def test_serve_runs_uvicorn_on_the_configured_port(
    tmp_path: Path, database_url: str | None
) -> None:
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
def test_tasks_survive_a_sigkill_of_the_hub(
    tmp_path: Path, study: tuple[str, list[Path]], database_url: str | None
) -> None:
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


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_operators_administer_the_hub_from_the_command_line(
    tmp_path: Path, database_url: str | None
) -> None:
    config = str(_config(tmp_path))
    token = _invoke("hub", "hospital", "add", "Hospital A", "-c", config).stdout.strip()
    bare = _invoke("hub", "hospital", "add", "Hospital B", "--subscribe", "", "-c", config)
    operator = _invoke("hub", "operator", "add", "Alice", "-c", config).stdout.strip()
    auditor = _invoke("hub", "operator", "add", "Bob", "--role", "auditor", "-c", config)
    assert len(operator) >= 43 and len(auditor.stdout.strip()) >= 43
    assert len(bare.stdout.strip().splitlines()) == 1

    catalog = _invoke("hub", "algorithm", "list", "-c", config).stdout
    assert "integrity-check  1.0.0  active" in catalog
    suspended = _invoke(
        "hub",
        "algorithm",
        "suspend",
        "integrity-check",
        "1.0.0",
        "--reason",
        "field safety notice",
        "-c",
        config,
    )
    assert "is suspended" in suspended.stdout
    retired = _invoke("hub", "algorithm", "retire", "integrity-check", "1.0.0", "-c", config)
    assert "is retired" in retired.stdout
    revived = CliRunner().invoke(
        app, ["hub", "algorithm", "activate", "integrity-check", "1.0.0", "-c", config]
    )
    assert revived.exit_code == 1
    assert "retired for good" in revived.output

    subscription = _invoke(
        "hub",
        "subscription",
        "add",
        "--hospital",
        "Hospital B",
        "--algorithm",
        "bone-age",
        "--agreement",
        "DPA-17",
        "--controller",
        "Hospital B",
        "--processor",
        "National hub",
        "--from",
        "2026-01-01",
        "--until",
        "2027-01-01",
        "-c",
        config,
    ).stdout.strip()
    listed = _invoke("hub", "subscription", "list", "--hospital", "Hospital B", "-c", config)
    assert subscription in listed.stdout
    assert "2026-01-01 00:00 to 2027-01-01 00:00  DPA-17" in listed.stdout
    assert "connection-test" not in listed.stdout
    ended = _invoke("hub", "subscription", "end", subscription, "-c", config)
    assert subscription in ended.stdout

    rotated = _invoke("hub", "token", "rotate", "Hospital A", "-c", config).stdout.strip()
    assert rotated != token
    tokens = _invoke("hub", "token", "list", "-c", config).stdout
    old_id = tokens.split("Hospital A")[1].split("token ")[1].split()[0]
    revoked = _invoke("hub", "token", "revoke", old_id, "-c", config)
    assert "revoked" in revoked.stdout
    assert "revoked" in _invoke("hub", "token", "list", "-c", config).stdout


def test_audit_verify_finds_tampering_in_the_hub_database(
    tmp_path: Path, database_url: str | None
) -> None:
    config = _config(tmp_path)
    for name in ("Hospital A", "Hospital B", "Hospital C"):
        _invoke("hub", "hospital", "add", name, "-c", str(config))
    verify = ["audit", "verify", "--hub-config", str(config)]
    intact = _invoke(*verify)
    assert "intact" in intact.stdout
    in_hub = "WHERE chain = 'hub'"  # the hub's own chain, one of several (schema 0008)
    _sql(tmp_path, database_url, f"UPDATE audit_events SET actor = 'x' {in_hub} AND seq = 2")
    edited = CliRunner().invoke(app, verify)
    assert edited.exit_code == 1
    assert "event 2 was changed after it was recorded" in edited.stdout

    total = _sql(tmp_path, database_url, f"SELECT max(seq) FROM audit_events {in_hub}")
    _sql(tmp_path, database_url, f"DELETE FROM audit_events {in_hub} AND seq = {total}")
    truncated = CliRunner().invoke(app, verify)
    assert f"events {total}..{total} are missing at the end (truncated)" in truncated.stdout

    exported = tmp_path / "audit.jsonl"
    _invoke("audit", "export", "--hub-config", str(config), "--chain", "hub", "-o", str(exported))
    assert isinstance(total, int)
    assert len(exported.read_text(encoding="utf-8").splitlines()) == total - 1
