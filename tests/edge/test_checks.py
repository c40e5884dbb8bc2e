"""Start-up checks against a real hub (in-process, own database) and a real Verification SCP.

The PACS is the demo PACS (:class:`aifi.demo.pacs.DemoPacs`, a pynetdicom
Storage and Verification SCP); a PACS that refuses our AE title is a
pynetdicom SCP with ``require_called_aet``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from typer.testing import CliRunner

from aifi.cli import app
from aifi.demo.pacs import DemoPacs
from aifi.edge.checks import run_checks
from aifi.edge.config import DicomPeer, EdgeSettings, HubPeer, ListenerSettings
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.errors import ConfigError
from aifi.netutil import free_port
from peers.hub import LocalHub, local_hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    with local_hub(tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[DemoPacs]:
    scp = DemoPacs(tmp_path / "pacs", ae_title="PACS")
    scp.start()
    yield scp
    scp.stop()


def settings_for(
    tmp_path: Path, hub_url: str, token: str, pacs_port: int, *algorithms: str
) -> EdgeSettings:
    return EdgeSettings(
        data_dir=tmp_path / "edge",
        listener=ListenerSettings(port=free_port(), allowed_calling_aets=["PACS"]),
        hub=HubPeer(url=hub_url, token=token),
        pacs=DicomPeer(ae_title="PACS", host="127.0.0.1", port=pacs_port),
        rules=[Rule(algorithm=a) for a in algorithms],
    )


def write_toml(settings: EdgeSettings, path: Path) -> Path:
    assert settings.pacs is not None
    rules = "".join(f'[[rules]]\nalgorithm = "{r.algorithm}"\n' for r in settings.rules)
    path.write_text(
        f'data_dir = "{settings.data_dir}"\n'
        f"[listener]\nport = {settings.listener.port}\n"
        f'[hub]\nurl = "{settings.hub.url}"\ntoken = "{settings.hub.token}"\n'
        f'[pacs]\nae_title = "{settings.pacs.ae_title}"\nhost = "127.0.0.1"\n'
        f"port = {settings.pacs.port}\n{rules}",
        encoding="utf-8",
    )
    return path


def by_name(settings: EdgeSettings) -> dict[str, tuple[bool, str, bool]]:
    return {r.name: (r.ok, r.detail, r.fatal) for r in run_checks(settings, listener=True)}


def test_a_correct_edge_passes_every_check(tmp_path: Path, hub: LocalHub, pacs: DemoPacs) -> None:
    token = hub.add_hospital("St. Correct", subscribe=("integrity-check", "fracture"))
    settings = settings_for(tmp_path, hub.url, token, pacs.port, "integrity-check", "fracture")
    results = by_name(settings)
    assert set(results) == {"data folder", "listener", "hub", "catalog", "subscriptions", "pacs"}
    assert all(ok for ok, _detail, _fatal in results.values()), results

    config = write_toml(settings, tmp_path / "edge.toml")
    done = CliRunner().invoke(app, ["edge", "check", "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert "answers C-ECHO" in done.output and "FAILED" not in done.output

    service = EdgeService(settings)
    service.start()  # the same checks pass at start
    service.stop()


def test_a_wrong_token_refuses_to_start(tmp_path: Path, hub: LocalHub, pacs: DemoPacs) -> None:
    settings = settings_for(tmp_path, hub.url, "not-a-token", pacs.port, "integrity-check")
    ok, detail, fatal = by_name(settings)["hub"]
    assert (ok, fatal) == (False, True)
    assert "refused hub.token (401)" in detail

    service = EdgeService(settings)
    with pytest.raises(ConfigError, match=r"start-up check 'hub' failed: .*hub\.token"):
        service.start()
    with socket.create_connection(("127.0.0.1", pacs.port)):
        pass  # (the PACS is fine)
    with pytest.raises(ConnectionRefusedError):  # the edge never listened
        socket.create_connection(("127.0.0.1", settings.listener.port), timeout=1).close()


def test_a_rule_for_an_algorithm_not_offered_or_not_subscribed_refuses_to_start(
    tmp_path: Path, hub: LocalHub, pacs: DemoPacs
) -> None:
    token = hub.add_hospital("St. Unsubscribed")  # integrity-check only
    not_subscribed = settings_for(tmp_path, hub.url, token, pacs.port, "fracture")
    ok, detail, fatal = by_name(not_subscribed)["subscriptions"]
    assert (ok, fatal) == (False, True)
    assert "no subscription in force for fracture" in detail
    with pytest.raises(ConfigError, match="start-up check 'subscriptions' failed"):
        EdgeService(not_subscribed).start()

    unknown = settings_for(tmp_path, hub.url, token, pacs.port, "integrity-chek")
    ok, detail, fatal = by_name(unknown)["catalog"]
    assert (ok, fatal) == (False, True)
    assert "does not offer (active): integrity-chek" in detail
    with pytest.raises(ConfigError, match="start-up check 'catalog' failed"):
        EdgeService(unknown).start()


def test_a_hub_and_a_pacs_that_are_down_are_warnings_at_start_and_failures_on_check(
    tmp_path: Path,
) -> None:
    settings = settings_for(
        tmp_path, f"http://127.0.0.1:{free_port()}", "t", free_port(), "integrity-check"
    )
    results = by_name(settings)
    assert results["hub"][:1] == (False,) and not results["hub"][2]
    assert "unreachable" in results["hub"][1]
    assert results["catalog"][1] == "not checked: the hub did not answer"
    assert results["pacs"][:1] == (False,) and "does not answer" in results["pacs"][1]

    service = EdgeService(settings)
    service.start()  # the edge buffers through outages; it does not refuse to start
    try:
        with socket.create_connection(("127.0.0.1", service.dicom_port), timeout=5):
            pass
    finally:
        service.stop()

    config = write_toml(settings, tmp_path / "edge.toml")
    done = CliRunner().invoke(app, ["edge", "check", "--config", str(config)])
    assert done.exit_code == 1
    assert "FAILED" in done.output and "unreachable" in done.output


def test_a_pacs_that_rejects_our_ae_title_is_named(tmp_path: Path, hub: LocalHub) -> None:
    ae = AE(ae_title="REALPACS")
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        token = hub.add_hospital("St. Rejected")
        settings = settings_for(tmp_path, hub.url, token, port, "integrity-check")
        ok, detail, fatal = by_name(settings)["pacs"]
    finally:
        server.shutdown()
    assert (ok, fatal) == (False, False)
    assert "rejected the association" in detail and "Called AE title not recognised" in detail


def test_a_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(tmp_path, f"http://127.0.0.1:{free_port()}", "t", free_port())
        settings.listener.port = port
        config = write_toml(settings, tmp_path / "edge.toml")
        done = subprocess.run(
            [sys.executable, "-m", "aifi", "edge", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: listener.port {port} is already in use (another edge or program listens"
        " there); change [listener] port in edge.toml"
    ]
