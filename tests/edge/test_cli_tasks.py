"""``aifi edge tasks`` and ``aifi edge task ID`` as a PACS administrator uses them.

"Did Mrs X's CT go through?": the listing names the patient, accession and
study date (from the encrypted pseudonym map, each lookup recorded), the
state, times, turnaround and what is in the PACS; filters and JSON for
scripts; one task's events.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aifi.cli import app
from aifi.deid import PseudonymMap
from aifi.demo.samples import DEMO_PATIENTS, cr_study, write_study
from aifi.edge.at_rest import edge_key
from aifi.edge.config import load_edge_settings
from aifi.edge.identity import remember_identity
from aifi.edge.state import DEAD_LETTER, EdgeState

WIDE = {"COLUMNS": "250"}
SENT: dict[str, str] = {}  # what the fixture's study carries


@pytest.fixture
def edge_toml(tmp_path: Path) -> tuple[Path, str, str]:
    """An edge's data folder with one delivered task (DEMO^BOBBY) and one dead letter."""
    config = tmp_path / "edge.toml"
    config.write_text('data_dir = "edge-data"\n', encoding="utf-8")
    settings = load_edge_settings(config)
    key = edge_key(settings)
    state = EdgeState(settings.data_dir / "edge.db", key=key)
    pseudonym_map = PseudonymMap(settings.data_dir / "pseudonyms.db", key)
    (ds,) = cr_study(1, patient=DEMO_PATIENTS[1], rows=64, columns=64)
    SENT.clear()
    SENT.update(accession=str(ds.AccessionNumber), date=str(ds.StudyDate))
    (path,) = write_study([ds], tmp_path / "study")
    remember_identity(pseudonym_map, "2.25.1001", path)
    now = time.time()
    delivered = state.create_task(str(ds.StudyInstanceUID), "fracture", "limbs", [], now - 30)
    state.update_task(
        delivered,
        state="delivered",
        pseudo_study_uid="2.25.1001",
        hub_task_id="hub-1",
        delivered_at=now - 17.5,
    )
    state.set_delivery(delivered, "2.25.2001", "sr", "stored")
    state.set_delivery(delivered, "2.25.2002", "gsps", "stored")
    state.record_event("task-delivered", "2 result objects stored in PACS", task_id=delivered)
    dead = state.create_task("1.2.3.4", "integrity-check", "all", [], now - 5)
    state.update_task(dead, state=DEAD_LETTER, reason="gave up after 2 attempts: PACS down")
    state.close()
    pseudonym_map.close()
    return config, delivered, dead


def run(*args: str) -> str:
    done = CliRunner().invoke(app, ["edge", *args], env=WIDE)
    assert done.exit_code == 0, done.output
    return done.output


def test_the_listing_names_patient_accession_study_date_and_turnaround(
    edge_toml: tuple[Path, str, str],
) -> None:
    config, delivered, dead = edge_toml
    rows = {r["id"]: r for r in json.loads(run("tasks", "--config", str(config), "--json"))}
    assert set(rows) == {delivered, dead}
    row = rows[delivered]
    assert row["patient_name"] == "DEMO, BOBBY"
    assert row["patient_id"] == "DEMO-0002"
    assert row["accession_number"] == SENT["accession"]
    assert row["study_date"].replace("-", "") == SENT["date"]
    assert row["turnaround_s"] == pytest.approx(12.5, abs=0.01)
    assert row["results"] == {"gsps": {"stored": 1}, "sr": {"stored": 1}}
    assert rows[dead]["patient_name"] == ""  # never pseudonymized: nothing in the map

    table = run("tasks", "--config", str(config))
    assert "DEMO, BOBBY (DEMO-0002)" in table
    assert "12.5 s" in table and "gsps 1 sr 1" in table
    assert "dead-letter" in table

    settings = load_edge_settings(config)
    with PseudonymMap(settings.data_dir / "pseudonyms.db", edge_key(settings)) as pmap:
        purposes = [lookup.purpose for lookup in pmap.lookups()]
    assert purposes == ["aifi edge tasks", "aifi edge tasks"]  # one per listing with identity


def test_filters_by_state_and_since(edge_toml: tuple[Path, str, str]) -> None:
    config, delivered, dead = edge_toml
    only = json.loads(run("tasks", "--config", str(config), "--json", "--state", "delivered"))
    assert [r["id"] for r in only] == [delivered]
    failed = json.loads(run("tasks", "--config", str(config), "--json", "--failed"))
    assert [r["id"] for r in failed] == [dead]
    recent = json.loads(run("tasks", "--config", str(config), "--json", "--since", "1h"))
    assert {r["id"] for r in recent} == {delivered, dead}
    assert (
        json.loads(run("tasks", "--config", str(config), "--json", "--since", "2999-01-01")) == []
    )
    bad = CliRunner().invoke(app, ["edge", "tasks", "--config", str(config), "--since", "soon"])
    assert bad.exit_code == 2 and "neither a duration" in bad.output


def test_one_task_shows_its_events(edge_toml: tuple[Path, str, str]) -> None:
    config, delivered, _dead = edge_toml
    shown = run("task", delivered[:8], "--config", str(config))
    assert "DEMO, BOBBY (DEMO-0002)" in shown
    assert "task-delivered" in shown and "2 result objects stored in PACS" in shown
    as_json = json.loads(run("task", delivered, "--config", str(config), "--json"))
    assert [e["kind"] for e in as_json["events"]] == ["task-delivered"]
    missing = CliRunner().invoke(app, ["edge", "task", "ffff", "--config", str(config)])
    assert missing.exit_code == 2 and "no task 'ffff'" in missing.output


def test_the_privacy_officer_sees_every_identity_lookup(edge_toml: tuple[Path, str, str]) -> None:
    config, _delivered, _dead = edge_toml
    run("tasks", "--config", str(config))  # one listing that shows identity: one lookup
    out = run("lookups", "--config", str(config))
    assert "aifi edge tasks" in out and "patient" in out
    assert "1 lookups recorded in all" in out
