"""Result destinations on the status page (headless chromium), ``aifi edge retry --destination``.

The hub is the real one in this process (status_support); the primary PACS
and a research archive are pynetdicom storage SCPs on loopback. The archive
first lacks the SR storage SOP class, so only that destination becomes a
dead letter while the task is delivered to the PACS. The admin retries it
from the command line (still refused: a second dead letter, both audited),
then the archive is fixed and the admin presses **retry research** on the
page; the SR lands in the archive and the page shows every destination
delivered. Screenshots are saved (the folder is printed).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer
from status_support import PASSWORD, PATIENT_NAME, SENDER, running_hub, send, study, wait_for
from typer.testing import CliRunner

from aifi.cli import app as cli
from aifi.edge.config import load_edge_settings
from aifi.edge.service import EdgeService
from aifi.netutil import free_port
from peers.browser import artifacts, chromium

pytestmark = [pytest.mark.slow]

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


class StorageScp:
    """A storage SCP keeping what it accepts; ``without`` one SOP class it cannot take."""

    def __init__(self, folder: Path, aet: str, port: int, *, without: str | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        ae = AE(ae_title=aet)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax not in (without, None):
                ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None
        self.server: ThreadedAssociationServer = server
        self.port = int(server.server_address[1])

    def _store(self, event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(self.folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000

    def held(self, sop_class_uid: str) -> int:
        return sum(
            1
            for path in self.folder.glob("*.dcm")
            if pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == sop_class_uid
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def edge_toml(folder: Path, hub_url: str, token: str, pacs: StorageScp, archive_port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "edge.toml"
    config.write_text(
        f"""
data_dir = "edge-data"
hospital = "St. Example"
quiet_period_s = 0.3

[listener]
port = 0
allowed_calling_aets = ["{SENDER}"]
min_free_bytes = 0

[hub]
url = "{hub_url}"
token = "{token}"
poll_interval_s = 0.1
max_backoff_s = 0.5

[pacs]
ae_title = "{pacs.aet}"
host = "127.0.0.1"
port = {pacs.port}

[[destinations]]
name = "research"
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = {archive_port}
result_kinds = ["sr"]
max_attempts = 2

[delivery]
max_attempts = 3
reconcile_interval_s = 600  # a retried destination is taken up at the next poll, not then

[[rules]]
name = "connection test"
algorithm = "integrity-check"

[status]
port = {free_port()}
admin_password = "{PASSWORD}"
""",
        encoding="utf-8",
    )
    return config


def test_one_destination_given_up_on_is_shown_and_retried_alone(tmp_path: Path) -> None:
    shots = artifacts("edge-status-destinations")
    pacs = StorageScp(tmp_path / "pacs", "PRIMARY", 0)
    archive = StorageScp(tmp_path / "archive", "ARCHIVE", 0, without=COMPREHENSIVE_3D_SR)
    with running_hub(tmp_path / "hub") as (hub_url, token):
        config = edge_toml(tmp_path / "site", hub_url, token, pacs, archive.port)
        edge = EdgeService(load_edge_settings(config))
        edge.start()
        others = edge.deliverer.others
        try:
            assert all(r.ok for r in send(edge, study(2)))
            wait_for(
                lambda: (
                    [t.state for t in edge.state.tasks()] == ["delivered"]
                    and bool(others.dead_letters(edge.state.tasks()[0].id))
                ),
                what="the task delivered, the archive given up on",
            )
            (task,) = edge.state.tasks()
            assert pacs.held(COMPREHENSIVE_3D_SR) == 1 and archive.held(COMPREHENSIVE_3D_SR) == 0

            wrong = CliRunner().invoke(
                cli, ["edge", "retry", "--destination", "vna", "--config", str(config)]
            )
            assert wrong.exit_code == 2
            assert "no destination 'vna' in edge.toml; known: pacs, research" in " ".join(
                wrong.output.split()
            )

            # The operator's command: the archive's part is tried again, and refused again.
            result = CliRunner().invoke(
                cli,
                [
                    *("edge", "retry", "--destination", "research", "--task", task.id[:10]),
                    *("--by", "it-admin", "--config", str(config)),
                ],
            )
            assert result.exit_code == 0, result.output
            assert f"task {task.id}: destination research queued again" in result.output

            def given_up(times: int) -> bool:
                kinds = [e["kind"] for e in edge.state.task_events(task.id)]
                return kinds.count("destination-dead-letter") == times and bool(
                    others.dead_letters(task.id)
                )

            wait_for(lambda: given_up(2), 20, "the retried archive given up on again")
            wait_for(lambda: edge.state.task(task.id).state == "delivered", 20, "delivered")
            assert pacs.held(COMPREHENSIVE_3D_SR) == 1  # the PACS was not sent it twice

            with chromium() as page:
                page.goto(edge.status_url or "")
                page.fill("#password", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("#destinations")
                research = page.locator("#destinations tr[data-destination='research']")
                primary = page.locator("#destinations tr[data-destination='pacs']")
                assert research.locator("[data-state='dead letter']").inner_text() == "1"
                assert research.locator("[data-state='delivered']").inner_text() == "0"
                assert primary.locator("[data-state='delivered']").inner_text() == "1"
                assert "(primary)" in primary.inner_text()
                row = page.locator(f"#tasks tr[data-task='{task.id}'] td.destinations")
                assert "pacs: delivered" in row.inner_text()
                assert "research: dead letter" in row.inner_text()
                dead = page.locator(
                    f"#destination-dead-letters tr[data-task='{task.id}']"
                    "[data-destination='research']"
                )
                assert PATIENT_NAME in dead.inner_text()
                assert "accepts none of the SOP classes offered" in dead.inner_text()
                page.screenshot(path=str(shots / "1-archive-dead-letter.png"), full_page=True)

                archive.stop()  # the archive's SR storage is switched on, same address
                archive = StorageScp(tmp_path / "archive", "ARCHIVE", archive.port)
                dead.locator("button[name=retry]").click()
                page.wait_for_selector(".message")
                assert "destination research queued again" in page.inner_text(".message")
                wait_for(
                    lambda: others.rows(task.id)["research"].state == "stored",
                    20,
                    "the SR stored into the archive",
                )
                wait_for(lambda: edge.state.task(task.id).state == "delivered", what="delivered")
                assert archive.held(COMPREHENSIVE_3D_SR) == 1
                assert pacs.held(COMPREHENSIVE_3D_SR) == 1

                page.goto(edge.status_url or "")
                research = page.locator("#destinations tr[data-destination='research']")
                assert research.locator("[data-state='delivered']").inner_text() == "1"
                assert research.locator("[data-state='dead letter']").inner_text() == "0"
                assert page.locator("#destination-dead-letters").count() == 0
                row = page.locator(f"#tasks tr[data-task='{task.id}'] td.destinations")
                assert "research: delivered" in row.inner_text()
                page.screenshot(path=str(shots / "2-archive-delivered.png"), full_page=True)

                page.click(f"#tasks tr[data-task='{task.id}'] a")
                page.wait_for_selector("#task-destinations")
                at = page.locator("#task-destinations tr[data-destination='research']")
                assert "delivered" in at.inner_text()
                page.screenshot(path=str(shots / "3-task.png"), full_page=True)

            retries = [
                e["detail"]
                for e in edge.state.task_events(task.id)
                if e["kind"] == "destination-retry-requested"
            ]
            assert len(retries) == 2
            assert "retried by it-admin" in retries[0]
            assert "retried by status page admin" in retries[1]
            assert edge.state.task(task.id).reason is None  # nothing given up on any more
        finally:
            edge.stop()
            archive.stop()
            pacs.stop()
