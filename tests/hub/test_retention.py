"""Retention: images leave the hub after delivery or a maximum age, results after a period."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from aifi.cli import app
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.models import Instance, Result, utcnow
from aifi.protocol.schemas import TaskState

from .conftest import Hub, serving


def _objects(settings: HubSettings, area: str) -> list[Path]:
    return sorted((settings.data_dir / area).rglob("*.dcm"))


def _events(hub: Hub, auditor: str, action: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = hub.client.get(
        "/audit", params={"action": action}, headers=hub.auth(auditor)
    ).json()
    return events


def _age(settings: HubSettings, *, images_hours: float = 0, results_days: float = 0) -> None:
    engine = make_engine(settings.effective_database_url)
    with make_sessions(engine)() as session:
        now = utcnow()
        session.execute(update(Instance).values(received_at=now - timedelta(hours=images_hours)))
        session.execute(update(Result).values(created_at=now - timedelta(days=results_days)))
        session.commit()
    engine.dispose()


@pytest.fixture
def completed(hub: Hub, token_a: str, study: tuple[str, list[Path]]) -> dict[str, Any]:
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    created = hub.create_task(token_a, study_uid, [f.stem for f in files])
    task = hub.wait_for_end(token_a, created.json()["id"])
    assert task["state"] == TaskState.COMPLETED
    return task


def test_images_are_gone_right_after_delivery_is_acknowledged(
    hub: Hub,
    settings: HubSettings,
    token_a: str,
    auditor_token: str,
    completed: dict[str, Any],
    study: tuple[str, list[Path]],
) -> None:
    study_uid, files = study
    assert len(_objects(settings, "instances")) == 4
    (result,) = completed["results"]

    ack = hub.client.post(
        f"/tasks/{completed['id']}/acknowledge",
        json={"delivered_sop_instance_uids": [result["sop_instance_uid"]]},
        headers=hub.auth(token_a),
    )

    assert ack.status_code == 200
    assert _objects(settings, "instances") == []
    assert len(_objects(settings, "results")) == 1
    series = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    input_url = f"/dicomweb/studies/{study_uid}/series/{series}/instances/{files[0].stem}"
    assert hub.client.get(input_url, headers=hub.auth(token_a)).status_code == 404
    result_url = f"/dicomweb/studies/{study_uid}/series/{result['series_instance_uid']}"
    assert hub.client.get(result_url, headers=hub.auth(token_a)).status_code == 200
    (event,) = _events(hub, auditor_token, "purge.images")
    assert event["detail"]["instances"] == 4
    assert event["detail"]["reasons"] == {"acknowledged": 4}
    assert event["detail"]["bytes"] == sum(f.stat().st_size for f in files)


def test_unacknowledged_images_and_results_are_purged_after_the_maximum(
    hub: Hub,
    settings: HubSettings,
    token_a: str,
    auditor_token: str,
    completed: dict[str, Any],
    tmp_path: Path,
) -> None:
    _age(settings, images_hours=23, results_days=29)
    config = tmp_path / "hub.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n', encoding="utf-8")
    runner = CliRunner()

    early = runner.invoke(app, ["hub", "purge", "-c", str(config)])
    assert early.exit_code == 0, early.output
    assert "deleted 0 images" in early.stdout
    assert len(_objects(settings, "instances")) == 4

    _age(settings, images_hours=25, results_days=31)
    late = runner.invoke(app, ["hub", "purge", "-c", str(config)])

    assert late.exit_code == 0, late.output
    assert "deleted 4 images" in late.stdout
    assert "1 result objects" in late.stdout
    assert _objects(settings, "instances") == []
    assert _objects(settings, "results") == []
    (result,) = completed["results"]
    wado = hub.client.get(
        f"/dicomweb/studies/{result['study_instance_uid']}/series/"
        f"{result['series_instance_uid']}/instances/{result['sop_instance_uid']}",
        headers=hub.auth(token_a),
    )
    assert wado.status_code == 404
    (images,) = _events(hub, auditor_token, "purge.images")
    assert images["detail"]["reasons"] == {"max_age": 4}
    (results,) = _events(hub, auditor_token, "purge.results")
    assert results["detail"] == {
        "objects": 1,
        "bytes": results["detail"]["bytes"],
        "tasks": [completed["id"]],
        "unacknowledged": 1,
    }
    assert results["detail"]["bytes"] > 0
    usage = hub.client.get(
        "/usage", params={"month": f"{utcnow():%Y-%m}"}, headers=hub.auth(auditor_token)
    ).json()
    assert usage[0]["instances"] == 4  # usage outlives the images


def test_the_hub_purges_by_itself_on_its_interval(
    settings: HubSettings, token_a: str, study: tuple[str, list[Path]]
) -> None:
    fast = settings.model_copy(update={"purge_interval_s": 0.1})
    with serving(create_app(fast), fast) as client:
        hub = Hub(client, fast)
        _study_uid, files = study
        assert hub.stow(token_a, files).status_code == 200
        _age(settings, images_hours=25)
        deadline = time.monotonic() + 10
        while _objects(settings, "instances") and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _objects(settings, "instances") == []
