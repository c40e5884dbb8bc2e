"""The hospital's release policy decides what leaves; the hub's catalog only requests.

Unit tests of the decision, the shipped default against the shipped
manifests, the CLI, and a hostile hub (the real hub app with an edited
catalog, every request body recorded) against a real edge receiving a study
over DICOM.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from privacy_support import (
    PLANTED_BIRTH,
    PLANTED_DESCRIPTION_WORD,
    PLANTED_ID,
    PLANTED_INSTITUTION,
    PLANTED_NAME,
    HostileHub,
    edge_settings,
    planted_study,
    send,
    wait_for,
)
from typer.testing import CliRunner

from aifi.algorithms import registry
from aifi.cli import app
from aifi.edge.policy import ReleasePolicy, default_policy_text
from aifi.edge.service import EdgeService
from aifi.edge.state import EdgeState
from aifi.errors import ConfigError

OFFICER = "J. Privacy Officer"


def policy_with(*approvals: tuple[str, str, list[str]]) -> ReleasePolicy:
    policy = ReleasePolicy()
    for algorithm, version, attributes in approvals:
        policy = policy.approve(algorithm, version, attributes, by=OFFICER)
    return policy


# -- the decision ----------------------------------------------------------------
def test_only_the_intersection_with_the_approval_is_released_and_the_rest_is_withheld() -> None:
    policy = policy_with(("fracture", "1.0", ["BodyPartExamined", "ViewPosition"]))
    release = policy.decide(
        "fracture", {"1.0": ["BodyPartExamined", "PatientName", "InstitutionName"]}
    )
    assert release.keep == ("BodyPartExamined",)
    assert release.withheld == {"1.0": ("InstitutionName", "PatientName")}
    assert release.held_reason is None
    assert release.withheld_detail is not None
    assert "fracture 1.0 requests InstitutionName, PatientName" in release.withheld_detail


def test_a_new_version_asking_for_more_waits_for_approval_with_the_reason() -> None:
    policy = policy_with(("fracture", "0.2.0", ["BodyPartExamined"]))
    release = policy.decide(
        "fracture",
        {"0.2.0": ["BodyPartExamined"], "0.3.0": ["BodyPartExamined", "SeriesDescription"]},
    )
    assert release.held_reason is not None
    assert release.held_reason.startswith(
        "waiting for release-policy approval of fracture 0.3.0: requests SeriesDescription"
    )
    approved = policy.approve(
        "fracture", "0.3.0", ["BodyPartExamined", "SeriesDescription"], by=OFFICER
    )
    again = approved.decide("fracture", {"0.3.0": ["BodyPartExamined", "SeriesDescription"]})
    assert again.held_reason is None
    assert again.keep == ("BodyPartExamined", "SeriesDescription")


def test_a_new_version_asking_for_no_more_than_approved_goes_without_new_approval() -> None:
    policy = policy_with(("fracture", "0.2.0", ["BodyPartExamined", "ViewPosition"]))
    release = policy.decide("fracture", {"0.2.1": ["ViewPosition"]})
    assert release.held_reason is None
    assert release.keep == ("ViewPosition",)


def test_an_unknown_algorithm_asking_for_identity_only_gets_the_profile() -> None:
    release = ReleasePolicy().decide("vendor-x", {"1": ["PatientName", "PatientBirthDate"]})
    # identity is never releasable, so nothing awaits approval: it is withheld outright
    assert release.held_reason is None
    assert release.keep == ()
    assert release.withheld == {"1": ("PatientBirthDate", "PatientName")}


def test_a_policy_file_approving_identity_is_refused() -> None:
    text = (
        '[[approval]]\nalgorithm = "x"\nversion = "1"\nattributes = ["PatientName"]\n'
        'approved_by = "someone"\napproved_at = "2025-01-01T00:00:00+00:00"\n'
    )
    with pytest.raises(ConfigError, match="approves PatientName for x 1"):
        ReleasePolicy.parse(text)


def test_an_approval_is_written_with_who_and_when_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "release-policy.toml"
    at = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)
    ReleasePolicy().approve(
        "bone-age", "1.0", ["PatientSex", "PatientAge"], by=OFFICER, at=at
    ).write(path)
    approval = ReleasePolicy.load(path).approval("bone-age", "1.0")
    assert approval is not None
    assert approval.attributes == ("PatientAge", "PatientSex")
    assert approval.approved_by == OFFICER
    assert approval.approved_at == "2025-03-01T09:30:00+00:00"
    assert path.read_text().startswith("# The hospital's release policy")
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_shipped_policy_approves_exactly_what_the_shipped_algorithms_request() -> None:
    policy = ReleasePolicy.parse(default_policy_text())
    for manifest in registry.manifests():
        approval = policy.approval(manifest.id, manifest.version)
        assert approval is not None, f"{manifest.id} {manifest.version} is not in the default"
        assert set(approval.attributes) == set(manifest.keep_attributes), manifest.id
        release = policy.decide(manifest.id, {manifest.version: manifest.keep_attributes})
        assert release.held_reason is None and not release.withheld


# -- the command line ------------------------------------------------------------
def test_policy_approve_writes_the_file_and_the_audit_trail(tmp_path: Path) -> None:
    (tmp_path / "edge.toml").write_text('data_dir = "edge-data"\n', encoding="utf-8")
    runner = CliRunner()
    config = str(tmp_path / "edge.toml")
    done = runner.invoke(
        app,
        ["edge", "policy", "approve", "--algorithm", "vendor-lung", "--version", "3.1",
         "--by", OFFICER, "--attribute", "StudyDescription", "--attribute", "PatientName",
         "--config", config],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "approved for vendor-lung 3.1: StudyDescription" in done.output
    assert "never released (identity, UIDs, dates): PatientName" in done.output
    policy = ReleasePolicy.load(tmp_path / "release-policy.toml")
    approval = policy.approval("vendor-lung", "3.1")
    assert approval is not None and approval.attributes == ("StudyDescription",)
    shown = runner.invoke(app, ["edge", "policy", "show", "--config", config])
    assert shown.exit_code == 0, shown.output
    assert "vendor-lung" in shown.output and OFFICER in shown.output
    state = EdgeState(tmp_path / "edge-data" / "edge.db")
    try:
        events = [e for e in state.audit.events() if e.action == "release-policy-approved"]
    finally:
        state.close()
    assert len(events) == 1
    assert events[0].actor == OFFICER


# -- a hostile hub ------------------------------------------------------------
@pytest.fixture
def hostile_hub(tmp_path: Path) -> Iterator[HostileHub]:
    hub = HostileHub(tmp_path / "hub", versions=("1.0.0",))
    hub.server.start()
    yield hub
    hub.server.stop()


def test_a_hostile_catalog_gets_only_what_the_hospital_approved(
    tmp_path: Path, hostile_hub: HostileHub
) -> None:
    policy_path = tmp_path / "release-policy.toml"
    policy_with(("integrity-check", "1.0.0", ["SeriesDescription"])).write(policy_path)
    settings = edge_settings(
        tmp_path, hostile_hub, hostile_hub.register("St. Example"), policy_path
    )
    edge = EdgeService(settings)
    edge.start()
    try:
        send(edge, planted_study(2))
        wait_for(lambda: any(t.hub_task_id for t in edge.state.tasks()))
        task = edge.state.tasks()[0]
        withheld = [e["detail"] for e in edge.state.events("release-withheld")]
        audit = [e for e in edge.state.audit.events() if e.action == "release-withheld"]
    finally:
        edge.stop()
    # the edge's audit trail says what it withheld, and for which task
    assert len(withheld) == 1
    assert (
        "integrity-check 1.0.0 requests InstitutionName, PatientBirthDate, PatientName"
        in (withheld[0])
    )
    assert audit and audit[0].task == task.id
    # nothing planted reached the hub: not in any request body, not in anything it stored
    planted = [
        PLANTED_NAME.split("^")[0].encode(),
        PLANTED_ID.encode(),
        PLANTED_BIRTH.encode(),
        PLANTED_INSTITUTION.encode(),
        b"Plantedwood",
        PLANTED_DESCRIPTION_WORD.encode(),
    ]
    bodies = hostile_hub.recorder.bodies
    assert len(bodies) >= 2  # the STOW-RS upload and the task
    leaks = [(i, p) for i, body in enumerate(bodies) for p in planted if p in body]
    assert leaks == []
    stored = hostile_hub.stored_bytes()
    assert [(path.name, p) for path, data in stored for p in planted if p in data] == []
    # SeriesDescription was approved: it left, reduced to its safe words
    uploads = [b for b in bodies if b"DICM" in b]
    descriptions = [
        str(pydicom.dcmread(_first_part(body)).get("SeriesDescription", "")) for body in uploads
    ]
    assert descriptions and all(d == "CHEST PA" for d in descriptions), descriptions


def test_a_new_version_requesting_more_is_held_until_approved_then_sent(
    tmp_path: Path,
) -> None:
    hub = HostileHub(tmp_path / "hub", versions=("1.1.0",))
    hub.server.start()
    policy_path = tmp_path / "release-policy.toml"
    policy_with(("integrity-check", "1.0.0", [])).write(policy_path)
    edge = EdgeService(edge_settings(tmp_path, hub, hub.register("St. Example"), policy_path))
    edge.start()
    try:
        send(edge, planted_study(1))
        wait_for(lambda: [t.state for t in edge.state.tasks()] == ["held"])
        task = edge.state.tasks()[0]
        assert task.reason is not None
        assert task.reason.startswith(
            "waiting for release-policy approval of integrity-check 1.1.0: requests "
            "InstitutionName, SeriesDescription"
        )
        assert not any(b"DICM" in body for body in hub.recorder.bodies)  # nothing sent
        ReleasePolicy.load(policy_path).approve(
            "integrity-check", "1.1.0", ["SeriesDescription"], by=OFFICER
        ).write(policy_path)
        # the submission is recorded just after the hub's task id: wait for the record
        wait_for(
            lambda: (
                "task-submitted"
                in [e["kind"] for e in edge.state.events() if e["task_id"] == task.id]
            )
        )
        kinds = [e["kind"] for e in edge.state.events() if e["task_id"] == task.id]
    finally:
        edge.stop()
        hub.server.stop()
    assert kinds.index("release-held") < kinds.index("release-approved")
    assert "task-submitted" in kinds
    assert any(b"DICM" in body for body in hub.recorder.bodies)


def _first_part(body: bytes) -> io.BytesIO:
    """The first DICOM part of a multipart/related STOW-RS body, as a file-like object."""
    start = body.index(b"\r\n\r\n") + 4
    boundary = body[: body.index(b"\r\n")]
    end = body.index(b"\r\n" + boundary, start)
    return io.BytesIO(body[start:end])


def test_policy_diff_shows_what_awaits_approval_and_exits_1(tmp_path: Path) -> None:
    hub = HostileHub(tmp_path / "hub", versions=("1.1.0",))
    hub.server.start()
    try:
        token = hub.register("St. Example")
        (tmp_path / "edge.toml").write_text(
            f'data_dir = "edge-data"\n[hub]\nurl = "{hub.url}"\ntoken = "{token}"\n',
            encoding="utf-8",
        )
        # the shipped policy: every shipped algorithm approved, integrity-check 1.0.0 for nothing
        (tmp_path / "release-policy.toml").write_text(default_policy_text(), encoding="utf-8")
        config = str(tmp_path / "edge.toml")
        done = CliRunner().invoke(app, ["edge", "policy", "diff", "--config", config])
        assert done.exit_code == 1, done.output
        assert "1.1.0" in done.output and "SeriesDescri" in done.output
        approved = CliRunner().invoke(
            app,
            ["edge", "policy", "approve", "--algorithm", "integrity-check", "--version", "1.1.0",
             "--by", OFFICER, "--config", config],
        )  # fmt: skip
        assert approved.exit_code == 0, approved.output
        assert "never released (identity, UIDs, dates): PatientBirthDate, PatientName" in (
            approved.output
        )
        again = CliRunner().invoke(app, ["edge", "policy", "diff", "--config", config])
        assert again.exit_code == 0, again.output
    finally:
        hub.server.stop()
