"""The hub.toml of the README, started as an operator starts it: ``aifi hub serve --config``.

The README's ``hub.toml`` block is written as it stands into the test's
folder; its ``models`` folder gets a vendor's fracture model whose file does
not match its pinned SHA-256, its ``remote-algorithms`` folder a remote
algorithm pointing at a vendor service on loopback (:mod:`peers.vendor`).
The port comes from ``AIFI_HUB_PORT``, which wins over the file's 8000; on
PostgreSQL the database from ``AIFI_HUB_DATABASE_URL`` (the ``database_url``
fixture). The refusals at start-up come before any database is opened, so
they run once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from aifi.algorithms.fracture.algorithm import DEMO_STORE
from aifi.cli import app
from aifi.netutil import free_port
from peers.vendor import TOKEN, Served, Vendor, vendor_app

from .conftest import multipart, new_uid, pseudonymized

README = Path(__file__).parents[2] / "README.md"
AIFI = (sys.executable, "-c", "from aifi.cli import main; main()")


def readme_hub_toml() -> str:
    """The ``toml`` block that follows "`hub.toml`:" in the README."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"`hub\.toml`:\s*```toml\n(.*?)```", text, re.DOTALL)
    assert found, "the README has no hub.toml block"
    return found.group(1)


def vendor_model(store: Path) -> None:
    """A vendor's fracture model 2.3.1 whose file was changed after it was pinned."""
    manifest = (DEMO_STORE / "fracture.toml").read_text(encoding="utf-8")
    manifest = manifest.replace('version = "0.1.0-demo"', 'version = "2.3.1"')
    manifest = manifest.replace('file = "fracture-demo.onnx"', 'file = "fracture-vendor.onnx"')
    (store / "fracture.toml").write_text(manifest, encoding="utf-8")
    (store / "fracture-vendor.onnx").write_bytes(
        (DEMO_STORE / "fracture-demo.onnx").read_bytes() + b"tampered"
    )


def remote_algorithm(folder: Path, endpoint: str) -> None:
    (folder / "vendor-nodule.remote.toml").write_text(
        f"""
id = "vendor-nodule"
version = "4.2.0"
name = "Lung nodule detection"
vendor = "Example Imaging AB"
intended_use = "Detection of lung nodules on chest CT."
regulatory_status = "test fixture; not a medical device"
produces = ["sr"]
endpoint = "{endpoint}"
token_env = "AIFI_TEST_VENDOR_TOKEN"
poll_interval_s = 0.05

[resources]
time_limit_s = 30

[[accepts]]
keyword = "Modality"
any_of = ["CT"]
""",
        encoding="utf-8",
    )


def cli(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(app, ["hub", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def hub_process(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*AIFI, "hub", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env, "PYTHONWARNINGS": "error"},
    )


@pytest.fixture
def vendor_service() -> Iterator[tuple[Vendor, Served]]:
    vendor = Vendor(polls_until_done=1)
    with Served(vendor_app(vendor)) as served:
        yield vendor, served


@pytest.mark.slow
def test_the_readme_hub_toml_runs_the_configured_algorithms(
    tmp_path: Path, vendor_service: tuple[Vendor, Served], database_url: str | None
) -> None:
    vendor, served = vendor_service
    text = readme_hub_toml()
    documented = tomllib.loads(text)["hub"]
    config = tmp_path / "hub.toml"
    config.write_text(text, encoding="utf-8")
    models = tmp_path / documented["model_dir"]
    remote = tmp_path / documented["remote_algorithms_dir"]
    models.mkdir()
    remote.mkdir()
    vendor_model(models)
    remote_algorithm(remote, served.url)
    port = free_port()
    env = {"AIFI_HUB_PORT": str(port), "AIFI_TEST_VENDOR_TOKEN": TOKEN}
    base = f"http://127.0.0.1:{port}"

    hub = hub_process(config, env)
    try:
        _wait_until_up(base, hub)
        token = cli(
            env,
            "hospital", "add", "Hospital A", "-c", str(config),
            "--subscribe", "integrity-check,vendor-nodule,fracture",
        ).strip()  # fmt: skip
        listed = cli(env, "algorithm", "list", "-c", str(config))
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
            catalog = {(e["algorithm_id"], e["version"]) for e in client.get("/catalog").json()}
            study_uid, series_uid = new_uid(), new_uid()
            files = [
                pseudonymized("CT_small.dcm", tmp_path, study=study_uid, series=series_uid)
                for _ in range(2)
            ]
            body, content_type = multipart([f.read_bytes() for f in files])
            stored = client.post(
                "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
            )
            assert stored.status_code == 200, stored.text
            sops = [f.stem for f in files]
            remote_task = _run_task(client, "vendor-nodule", study_uid, sops)
            refused_task = _run_task(client, "fracture", study_uid, sops)
        hub.send_signal(signal.SIGTERM)
        output = hub.communicate(timeout=30)[0].decode()
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()

    assert ("vendor-nodule", "4.2.0") in catalog
    assert ("fracture", "2.3.1") in catalog
    lines = {line.split("  ")[0] + " " + line.split("  ")[1]: line for line in listed.splitlines()}
    assert lines["vendor-nodule 4.2.0"].endswith(served.url)
    assert lines["bone-age 0.1.0-demo"].endswith("  built-in")
    assert (
        f"{models / 'fracture.toml'}  REFUSED: model file fracture-vendor.onnx"
        in (lines["fracture 2.3.1"])
    )
    assert remote_task["state"] == "COMPLETED", remote_task
    assert remote_task["findings"]["summary"] == "1 lung nodule suspected"
    assert len(vendor.received) == 2
    assert refused_task["state"] == "CANCELED"
    assert "SHA-256" in refused_task["reason"]
    assert "it is not run" in refused_task["reason"]
    assert "algorithm fracture is not run" in output
    assert "Traceback" not in output


def test_a_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nport = 8000\n", encoding="utf-8")
    with socket_listening() as port:
        hub = hub_process(config, {"AIFI_HUB_PORT": str(port)})
        output = hub.communicate(timeout=60)[0].decode()

    assert hub.returncode == 1
    assert f"error: port {port} on 127.0.0.1 is in use" in output
    assert "AIFI_HUB_PORT" in output
    assert "Traceback" not in output


def test_an_unknown_section_stops_the_start_with_its_name(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nport = 8000\n[listner]\nport = 1\n", encoding="utf-8")

    hub = hub_process(config, {})
    output = hub.communicate(timeout=60)[0].decode()

    assert hub.returncode != 0
    assert "[listner]" in output
    assert "Traceback" not in output


class socket_listening:  # noqa: N801 - used as a context manager, like open()
    """A loopback port some other program listens on."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1)
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def _wait_until_up(base: str, hub: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            raise AssertionError(f"the hub exited: {hub.communicate()[0].decode()}")
        try:
            if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the hub did not answer")


def _run_task(
    client: httpx.Client, algorithm: str, study_uid: str, sops: list[str]
) -> dict[str, Any]:
    created = client.post(
        "/tasks",
        json={
            "client_task_id": f"{algorithm}-1",
            "algorithm_id": algorithm,
            "study_instance_uid": study_uid,
            "sop_instance_uids": sops,
        },
    )
    assert created.status_code in (200, 201, 202), created.text
    task_id = created.json()["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        task: dict[str, Any] = client.get(f"/tasks/{task_id}").json()
        if task["state"] in ("COMPLETED", "CANCELED"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} for {algorithm} did not end")
