"""The hub console in a real browser (headless chromium): a failed task re-run; a hospital's view.

An operator logs in with their token, finds the task that failed (the
vendor's service was down), reads its reason on the timeline, re-runs it
once the service is back and watches it complete. Hospital B's
administrator logs in with B's token and sees B only. Screenshots are
saved under the folder the test prints (build/test-artifacts/hub-console/).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from aifi.algorithms.base import Algorithm
from aifi.hub.schemas import TaskState
from peers.browser import artifacts, chromium

from .conftest import Hub, new_uid, pseudonymized
from .consoletools import Flaky

pytestmark = pytest.mark.slow


@pytest.fixture
def switch(tmp_path: Path) -> Path:
    path = tmp_path / "vendor-down"
    path.touch()
    return path


@pytest.fixture
def test_algorithms(switch: Path) -> dict[str, Algorithm]:
    return {"flaky": Flaky(switch)}


def _send(hub: Hub, token: str, folder: Path, algorithm: str) -> dict[str, Any]:
    folder.mkdir(exist_ok=True)
    study = new_uid()
    files = [pseudonymized("CT_small.dcm", folder, study=study) for _ in range(2)]
    assert hub.stow(token, files).status_code == 200
    created = hub.create_task(token, study, [f.stem for f in files], algorithm=algorithm)
    return hub.wait_for_end(token, created.json()["id"])


def _login(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/console")
    assert "/console/login" in page.url  # nothing without logging in
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("nav")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_operator_reruns_a_failed_task_and_a_hospital_sees_only_itself(
    hub: Hub,
    token_a: str,
    token_b: str,
    operator_token: str,
    switch: Path,
    tmp_path: Path,
) -> None:
    shots = artifacts("hub-console")
    base = str(hub.client.base_url).rstrip("/")
    _send(hub, token_a, tmp_path / "a", "integrity-check")
    failed = _send(hub, token_a, tmp_path / "a", "flaky")
    assert failed["state"] == TaskState.CANCELED
    b_task = _send(hub, token_b, tmp_path / "b", "integrity-check")

    with chromium() as page:
        page.goto(f"{base}/console/login")
        page.fill("#token", "not-a-token")
        page.click("button[type=submit]")
        assert "unknown or revoked token" in page.inner_text("main")

        _login(page, base, operator_token)
        assert "operator" in page.inner_text("header")
        page.screenshot(path=str(shots / "1-overview.png"), full_page=True)

        page.click("nav >> text=Tasks")
        page.select_option("select[name=state]", "CANCELED")
        page.click("form.filters button[type=submit]")
        row = page.locator(f"#tasks tr[data-task='{failed['id']}']")
        assert "CANCELED" in row.inner_text() and "did not answer" in row.inner_text()
        page.screenshot(path=str(shots / "2-failed-task.png"), full_page=True)

        row.locator("a").click()
        page.wait_for_selector("#rerun")
        assert "canceled" in page.inner_text(".timeline")
        switch.unlink()  # the vendor's service is back
        page.click("#rerun")
        page.wait_for_selector(".message")
        assert "task scheduled again" in page.inner_text(".message")
        deadline = time.monotonic() + 60
        while "COMPLETED" not in page.inner_text("#task-state"):
            assert time.monotonic() < deadline, "the re-run task did not complete"
            time.sleep(0.2)
            page.reload()
        timeline = page.inner_text(".timeline")
        assert "re-run requested" in timeline and "completed" in timeline
        page.screenshot(path=str(shots / "3-rerun-completed.png"), full_page=True)

        page.click("nav >> text=Hospitals")
        assert "Hospital A" in page.inner_text("main") and "Hospital B" in page.inner_text("main")

        hospital = page.context.browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            b_page = hospital.new_page()
            _login(b_page, base, token_b)
            for path in ("/console", "/console/hospitals", "/console/tasks", "/console/quality"):
                b_page.goto(f"{base}{path}")
                shown = b_page.inner_text("main")
                assert "Hospital A" not in shown and failed["id"] not in b_page.content(), path
            b_page.goto(f"{base}/console/tasks")
            assert b_task["id"] in b_page.content()  # its own task is there
            b_page.goto(f"{base}/console/hospitals")
            assert "Hospital B" in b_page.inner_text("main")
            b_page.screenshot(path=str(shots / "4-hospital-b-hospitals.png"), full_page=True)
            b_page.goto(f"{base}/console/tasks/{failed['id']}")
            assert "404" in b_page.inner_text("main")
        finally:
            hospital.close()
