"""The edge's status page in a real browser (headless chromium): a dead letter retried into Orthanc.

The PACS (Orthanc) is down when the result comes back, so delivery gives up
after its two attempts and the task is a dead letter. The admin logs in,
sees the task with the patient's name (read from the pseudonym map, the
lookup recorded for "status page") and the PACS down; Orthanc comes up on
the port the edge was told; the admin presses **retry** and the result is
in Orthanc. Screenshots of each step are saved (the folder is printed).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from status_support import (
    PASSWORD,
    PATIENT_NAME,
    edge_settings,
    running_hub,
    send,
    study,
    wait_for,
)

from aifi.edge.service import EdgeService
from aifi.edge.state import DEAD_LETTER
from aifi.netutil import free_port
from peers.browser import artifacts, chromium
from peers.orthanc import orthanc_available, start_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.orthanc]


# pynetdicom's transport drops the socket of a refused connection without closing it
# (transport.py, connect): CPython closes it at once, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_dead_letter_is_retried_from_the_page_and_lands_in_orthanc(tmp_path: Path) -> None:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    shots = artifacts("edge-status-page")
    pacs_port = free_port()  # where Orthanc will listen; nothing does yet
    with running_hub(tmp_path / "hub") as (hub_url, token):
        edge = EdgeService(edge_settings(tmp_path / "edge", hub_url, token, pacs_port))
        edge.start()
        try:
            datasets = study(3)
            assert all(r.ok for r in send(edge, datasets))
            wait_for(lambda: [t.state for t in edge.state.tasks()] == [DEAD_LETTER], what="dl")
            (task,) = edge.state.tasks()
            url = edge.status_url
            assert url is not None and url.startswith("http://127.0.0.1:")

            with chromium() as page:
                page.goto(url)
                assert page.url.endswith("/login")  # nothing without logging in
                page.fill("#password", "wrong")
                page.click("button[type=submit]")
                assert "wrong password" in page.inner_text("main")
                page.fill("#password", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("#dead-letters")
                page.screenshot(path=str(shots / "1-dead-letter.png"), full_page=True)

                row = page.locator(f"#dead-letters tr[data-task='{task.id}']")
                assert PATIENT_NAME in row.inner_text()
                assert DEAD_LETTER in row.inner_text()
                assert "not reachable" in row.inner_text()
                pacs = page.locator("#connectivity tr[data-peer='pacs']")
                assert "DOWN" in pacs.inner_text()
                assert "up" in page.locator("#connectivity tr[data-peer='hub']").inner_text()

                with start_orthanc(
                    tmp_path / "orthanc", extra_config={"DicomPort": pacs_port}, stop_grace_s=0.5
                ) as orthanc:
                    row.locator("button[name=retry]").click()
                    page.wait_for_selector(".message")
                    assert "queued again" in page.inner_text(".message")
                    study_uid = str(datasets[0].StudyInstanceUID)
                    wait_for(lambda: edge.state.task(task.id).state == "delivered", what="delivery")
                    in_orthanc = orthanc.find_instances(StudyInstanceUID=study_uid)
                    assert len(in_orthanc) == 1  # the integrity check's SR, in the study
                    sr = orthanc.get_tags(in_orthanc[0])
                    assert "SR" in str(sr)

                    page.goto(url)
                    delivered = page.locator(f"#tasks tr[data-task='{task.id}']")
                    assert "delivered" in delivered.inner_text()
                    assert "sr 1" in delivered.inner_text()
                    assert "no dead letters" in page.inner_text("#dead-letters").lower()
                    assert "up" in page.locator("#connectivity tr[data-peer='pacs']").inner_text()
                    page.screenshot(path=str(shots / "2-delivered.png"), full_page=True)

                    page.click(f"#tasks tr[data-task='{task.id}'] a")
                    page.wait_for_selector("#events")
                    events = page.inner_text("#events")
                    assert "dead-letter" in events and "retry-requested" in events
                    assert "task-delivered" in events
                    page.screenshot(path=str(shots / "3-task.png"), full_page=True)

                    # the radiologist disagrees, with a correction code: to the hub, no identity
                    page.check("input[name=verdict][value=disagree]")
                    page.fill("input[name=code_value]", "72704001")
                    page.fill("input[name=code_meaning]", "Fracture")
                    page.click("#feedback button[type=submit]")
                    page.wait_for_selector(".message")
                    assert "sent to the hub" in page.inner_text(".message")
                    hub_task = edge.state.task(task.id).hub_task_id
                    stored = httpx.get(
                        f"{hub_url}/tasks/{hub_task}/feedback",
                        headers={"Authorization": f"Bearer {token}"},
                    ).json()
                    assert stored["verdict"] == "disagree"
                    assert stored["correction"]["code_value"] == "72704001"
                    assert PATIENT_NAME.split(",")[0] not in str(stored)

            lookups = [lk for lk in edge.pseudonym_map.lookups() if lk.purpose == "status page"]
            assert lookups and all(lk.found for lk in lookups)
            assert any(e["kind"] == "retry-requested" for e in edge.state.task_events(task.id))

            scraped = httpx.get(url + "metrics").text
            values = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(scraped)
                for s in family.samples
            }
            assert values[("aifi_edge_received_instances_total", ())] == 3
            assert values[("aifi_edge_dead_letters_total", ())] == 1
            assert values[("aifi_edge_dead_letters", ())] == 0
            assert values[("aifi_edge_retries_total", (("kind", "operator"),))] == 1
            assert values[("aifi_edge_retries_total", (("kind", "delivery"),))] == 1
            # the start-up C-ECHO and both store attempts found no PACS
            assert values[("aifi_edge_peer_errors_total", (("peer", "pacs"),))] == 3
            assert values[("aifi_edge_peer_up", (("peer", "pacs"),))] == 1
            assert values[("aifi_edge_tasks", (("state", "delivered"),))] == 1
        finally:
            edge.stop()
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-dead-letter.png",
        "2-delivered.png",
        "3-task.png",
    ]


def test_forms_need_the_session_and_its_csrf_token(tmp_path: Path) -> None:
    with running_hub(tmp_path / "hub") as (hub_url, token):
        edge = EdgeService(edge_settings(tmp_path / "edge", hub_url, token, free_port()))
        edge.start()
        try:
            url = edge.status_url
            assert url is not None
            task_id = edge.state.create_task("1.2.3", "integrity-check", "r", [], 0.0)
            edge.state.update_task(task_id, state=DEAD_LETTER, reason="PACS down")
            with httpx.Client(base_url=url) as client:
                anonymous = client.post(f"/tasks/{task_id}/retry", data={"csrf": "x"})
                assert anonymous.status_code == 303
                assert anonymous.headers["location"] == "/login"
                assert client.get("/").headers["location"] == "/login"
                client.post("/login", data={"password": PASSWORD})
                forged = client.post(f"/tasks/{task_id}/retry", data={"csrf": "forged"})
                assert forged.headers["location"] == "/login"
                assert edge.state.task(task_id).state == DEAD_LETTER  # nothing done
                page = client.get("/")
                assert page.status_code == 200
                assert "script-src 'none'" in page.headers["content-security-policy"]
                assert page.headers["cache-control"] == "no-store"
                assert "cdn" not in page.text.lower() and "https://" not in page.text
            with httpx.Client(base_url=url) as probes:
                assert probes.get("/health").json() == {"status": "alive"}
                ready = probes.get("/ready")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"] == {"database": "ok", "storage": "ok", "hub": "ok"}
        finally:
            edge.stop()


def test_ready_says_what_is_missing_when_the_hub_is_down(tmp_path: Path) -> None:
    edge = EdgeService(edge_settings(tmp_path / "edge", "http://127.0.0.1:9", "t", free_port()))
    edge.start()
    try:
        assert edge.status_url is not None
        ready = httpx.get(edge.status_url + "ready")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["database"] == "ok" and checks["storage"] == "ok"
        assert checks["hub"].startswith("hub unreachable")
    finally:
        edge.stop()


def test_a_port_in_use_costs_the_page_not_the_edge(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    settings = edge_settings(tmp_path / "edge", "http://127.0.0.1:9", "t", free_port())
    settings.status.port = taken.getsockname()[1]
    edge = EdgeService(settings)
    try:
        edge.start()
        assert edge.status_url is None
        assert edge.state.events("status-page-not-started")
        assert edge.dicom_port > 0  # still receiving
    finally:
        edge.stop()
        taken.close()


def test_production_refuses_the_placeholder_admin_password(tmp_path: Path) -> None:
    from aifi.edge.config import EdgeSettings, HubPeer, StatusSettings

    production = {
        "environment": "production",
        "data_dir": tmp_path / "d",
        "key_file": tmp_path / "k",
        "hub": HubPeer(url="https://hub.example", token="a-real-token-from-the-hub"),
    }
    with pytest.raises(ValueError, match=r"status\.admin_password is the placeholder"):
        EdgeSettings(**production, status=StatusSettings(admin_password="change-me"))
    assert EdgeSettings(**production).status.admin_password is None  # probes and metrics only
