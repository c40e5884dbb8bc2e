"""Usage for joint procurement: a scripted month of traffic, counted back exactly."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.cli import app
from aifi.errors import InputNotAccepted
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.models import Task
from aifi.protocol.schemas import TaskState

from .conftest import Hub, new_uid, pseudonymized, split_multipart


class Refuses:
    manifest = Manifest(
        id="refuses",
        version="0.1",
        name="refuses",
        vendor="tests",
        intended_use="tests",
        regulatory_status="none",
        accepts=(),
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        raise InputNotAccepted("not a hand radiograph")


@pytest.fixture
def test_algorithms() -> dict[str, Algorithm]:
    return {"refuses": Refuses()}


def _send(
    hub: Hub, token: str, folder: Path, images: int, algorithm: str = "integrity-check"
) -> tuple[dict[str, Any], int]:
    """One study of ``images`` CT images, uploaded and run; the task and the bytes sent."""
    study, series = new_uid(), new_uid()
    files = [
        pseudonymized("CT_small.dcm", folder, study=study, series=series) for _ in range(images)
    ]
    assert hub.stow(token, files).status_code == 200
    created = hub.create_task(token, study, [f.stem for f in files], algorithm=algorithm)
    assert created.status_code == 201, created.text
    return hub.wait_for_end(token, created.json()["id"]), sum(f.stat().st_size for f in files)


def _result_bytes(hub: Hub, token: str, task: dict[str, Any]) -> int:
    total = 0
    for ref in task["results"]:
        response = hub.client.get(
            f"/dicomweb/studies/{ref['study_instance_uid']}/series/"
            f"{ref['series_instance_uid']}/instances/{ref['sop_instance_uid']}",
            headers=hub.auth(token),
        )
        (part,) = split_multipart(response.content, response.headers["content-type"])
        total += len(part)
    return total


def test_usage_of_a_scripted_month_matches_what_was_sent(
    hub: Hub,
    settings: HubSettings,
    token_a: str,
    token_b: str,
    auditor_token: str,
    dicom_dir: Path,
    tmp_path: Path,
) -> None:
    month = f"{datetime.now(UTC):%Y-%m}"
    a1, a1_bytes = _send(hub, token_a, dicom_dir, 4)
    a2, a2_bytes = _send(hub, token_a, dicom_dir, 2)
    a3, a3_bytes = _send(hub, token_a, dicom_dir, 3, algorithm="refuses")
    last_month, _ = _send(hub, token_a, dicom_dir, 5)
    b1, b1_bytes = _send(hub, token_b, dicom_dir, 1)
    study = new_uid()
    no_agreement = hub.create_task(token_a, study, ["1.2.3"], algorithm="echo-not-installed")
    assert no_agreement.status_code == 422
    assert [t["state"] for t in (a1, a2, a3, b1)] == [
        TaskState.COMPLETED,
        TaskState.COMPLETED,
        TaskState.CANCELED,
        TaskState.COMPLETED,
    ]
    engine = make_engine(settings.effective_database_url)
    with make_sessions(engine)() as session:
        session.execute(
            update(Task)
            .where(Task.id == last_month["id"])
            .values(created_at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC))
        )
        session.commit()
    engine.dispose()

    response = hub.client.get("/usage", params={"month": month}, headers=hub.auth(auditor_token))
    assert response.status_code == 200
    rows = {(r["hospital"], r["algorithm_id"]): r for r in response.json()}

    check = rows[("Hospital A", "integrity-check")]
    assert check["studies"] == 2
    assert check["instances"] == 6
    assert check["bytes_in"] == a1_bytes + a2_bytes
    assert check["bytes_out"] == _result_bytes(hub, token_a, a1) + _result_bytes(hub, token_a, a2)
    assert check["completed"] == 2
    assert check["canceled"] == check["pending"] == check["refused"] == 0
    assert check["algorithm_versions"] == ["1.0.0"]
    assert check["compute_seconds"] > 0
    refused = rows[("Hospital A", "refuses")]
    assert (refused["studies"], refused["instances"], refused["bytes_in"]) == (1, 3, a3_bytes)
    assert (refused["canceled"], refused["completed"], refused["bytes_out"]) == (1, 0, 0)
    unknown = rows[("Hospital A", "echo-not-installed")]
    assert (unknown["refused"], unknown["studies"]) == (1, 0)
    other = rows[("Hospital B", "integrity-check")]
    assert (other["studies"], other["instances"], other["bytes_in"]) == (1, 1, b1_bytes)
    assert len(rows) == 4

    october = hub.client.get(
        "/usage", params={"month": "2026-10"}, headers=hub.auth(auditor_token)
    ).json()
    (only,) = october
    assert (only["hospital"], only["studies"], only["instances"]) == ("Hospital A", 1, 5)

    config = tmp_path / "hub.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n', encoding="utf-8")
    runner = CliRunner()
    as_csv = runner.invoke(app, ["hub", "report", "usage", "--month", month, "-c", str(config)])
    assert as_csv.exit_code == 0, as_csv.output
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {(r["hospital"], r["algorithm_id"], r["instances"]) for r in table} == {
        ("Hospital A", "integrity-check", "6"),
        ("Hospital A", "refuses", "3"),
        ("Hospital A", "echo-not-installed", "0"),
        ("Hospital B", "integrity-check", "1"),
    }
    as_json = runner.invoke(
        app, ["hub", "report", "usage", "--month", month, "--format", "json", "-c", str(config)]
    )
    assert json.loads(as_json.stdout) == response.json()
    verified = hub.client.get("/audit/verify", headers=hub.auth(auditor_token)).json()
    assert verified["intact"], verified["problems"]  # two workers appended to one chain


def test_a_month_that_is_not_a_month_is_refused(hub: Hub, auditor_token: str) -> None:
    response = hub.client.get("/usage?month=2026-13", headers=hub.auth(auditor_token))
    assert response.status_code == 422
