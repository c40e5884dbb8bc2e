"""Pulling a study on demand: ``aifi edge request`` against Orthanc as query/retrieve peer.

Orthanc (Debian package, DICOM Q/R built in) holds the hospital's studies,
put there by dcmtk's storescu; the edge knows it as ``[[query_retrieve]]``
and Orthanc knows the edge as a modality (needed for C-MOVE). No routing
rule matches: the task exists only because it was requested. The hub is the
real one in-process (tests/peers/hub.py), running bone-age on the hand
phantom; the SR lands back in Orthanc.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from aifi.cli import app as cli
from aifi.core.manifest import Priors
from aifi.edge.assembly import Assembler
from aifi.edge.config import EdgeSettings, load_edge_settings
from aifi.edge.pull import peer_named, pull_study
from aifi.edge.service import EdgeService
from aifi.edge.state import EdgeState
from aifi.netutil import free_port
from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.hand import bone_age_study
from aifi.phantoms.write import write_study
from peers.dcmtk import storescu
from peers.hub import LocalHub, local_hub
from peers.orthanc import Orthanc, orthanc_available, start_orthanc

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]


def edge_toml(folder: Path, orthanc: Orthanc, *, hub_url: str, token: str, method: str) -> Path:
    config = folder / "edge.toml"
    config.write_text(
        f"""
data_dir = "edge-data"
quiet_period_s = 0.5

[listener]
port = {free_port()}
allowed_calling_aets = ["{orthanc.aet}"]
min_free_bytes = 0

[hub]
url = "{hub_url}"
token = "{token}"
poll_interval_s = 0.1
max_backoff_s = 1.0

[pacs]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[status]
enabled = false

[[query_retrieve]]
name = "pacs"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
method = "{method}"
""",
        encoding="utf-8",
    )
    return config


def hand_study(
    accession: str, *, patient_id: str, date: dt.date, seed: int
) -> list[pydicom.FileDataset]:
    context = StudyContext(
        patient_name="PHANTOM^HAND",
        patient_id=patient_id,
        patient_sex="F",
        age_months=121,
        study_date=date,
        accession_number=accession,
        study_description="XR HAND BONE AGE",
    )
    return list(bone_age_study(age_months=121, sex="F", seed=seed, study=context))


def put_into_orthanc(orthanc: Orthanc, datasets: list[pydicom.FileDataset], folder: Path) -> str:
    files = write_study(datasets, folder)
    result = storescu(
        files, "127.0.0.1", orthanc.dicom_port, calling_aet="MODALITY", called_aet=orthanc.aet
    )
    assert result.returncode == 0, result.stderr
    return str(datasets[0].StudyInstanceUID)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    with local_hub(tmp_path / "hub") as server:
        yield server


def run_edge(settings: EdgeSettings, orthanc: Orthanc) -> EdgeService:
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    return service


def wait_for_sr(orthanc: Orthanc, study_uid: str, timeout: float = 90) -> pydicom.Dataset:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
        if ids:
            return orthanc.dataset(ids[0])
        time.sleep(0.2)
    raise AssertionError(f"no SR arrived in Orthanc within {timeout} s")


@pytest.mark.parametrize("method", ["move", "get"])
def test_request_by_accession_pulls_the_study_and_the_result_lands_in_pacs(
    tmp_path: Path, orthanc: Orthanc, hub: LocalHub, method: str
) -> None:
    study_uid = put_into_orthanc(
        orthanc,
        hand_study("ACC-PULL-1", patient_id="PH-PULL-1", date=dt.date(2026, 1, 15), seed=1),
        tmp_path / "modality",
    )
    token = hub.add_hospital("St. Example", subscribe=["bone-age"])
    config = edge_toml(tmp_path, orthanc, hub_url=hub.url, token=token, method=method)
    service = run_edge(load_edge_settings(config), orthanc)
    try:
        # The CLI in a process of its own, as an operator runs it beside the edge.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "aifi",
                "edge",
                "request",
                "--accession",
                "ACC-PULL-1",
                "--algorithm",
                "bone-age",
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"requested bone-age on study {study_uid}" in result.stdout
        assert f"1 instances retrieved by C-{method.upper()}" in result.stdout
        sr = wait_for_sr(orthanc, study_uid)
        assert sr.PatientID == "PH-PULL-1"  # re-identified, inside the original study
        (task,) = service.state.tasks()
        assert task.algorithm_id == "bone-age"
        assert task.rule == "request by aifi edge request"  # no routing rule was configured
    finally:
        service.stop()


def test_unknown_accession_is_an_answer_not_a_crash(
    tmp_path: Path, orthanc: Orthanc, hub: LocalHub
) -> None:
    config = edge_toml(tmp_path, orthanc, hub_url=hub.url, token="x", method="move")
    orthanc.add_modality("aifi", "AIFI_EDGE", "127.0.0.1", free_port())
    result = CliRunner().invoke(
        cli,
        [
            "edge",
            "request",
            "--accession",
            "NO-SUCH",
            "--algorithm",
            "bone-age",
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 2
    assert "has no study for accession NO-SUCH" in result.output


def test_priors_of_the_same_patient_and_body_part_are_pulled_and_noted_on_the_task(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """An algorithm asking for 2 years of priors: the 2025 hand comes, the 2020 hand does not."""
    # Priors are pulled to the edge and noted on the task; they are not the task's own
    # instances (tests/e2e/test_priors.py follows them to the hub and back).
    patient = "PH-PRIOR-1"
    current = put_into_orthanc(
        orthanc,
        hand_study("ACC-NOW", patient_id=patient, date=dt.date(2026, 1, 15), seed=3),
        tmp_path / "now",
    )
    prior = put_into_orthanc(
        orthanc,
        hand_study("ACC-2025", patient_id=patient, date=dt.date(2025, 3, 1), seed=4),
        tmp_path / "prior",
    )
    put_into_orthanc(  # too old
        orthanc,
        hand_study("ACC-2020", patient_id=patient, date=dt.date(2020, 3, 1), seed=5),
        tmp_path / "old",
    )
    put_into_orthanc(  # another patient
        orthanc,
        hand_study("ACC-OTHER", patient_id="PH-OTHER", date=dt.date(2025, 6, 1), seed=6),
        tmp_path / "other",
    )
    config = edge_toml(tmp_path, orthanc, hub_url="http://127.0.0.1:9", token="x", method="get")
    settings = load_edge_settings(config)
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", settings.listener.port)
    state = EdgeState(settings.data_dir / "edge.db")
    outcome = pull_study(
        settings,
        peer_named(settings, "pacs"),
        accession="ACC-NOW",
        algorithm_id="bone-age",
        priors=Priors(years=2),
        priority="HIGH",
        state=state,
    )
    assert outcome.ok, outcome.detail
    assert outcome.study_instance_uid == current
    assert outcome.prior_study_uids == [prior]
    assert outcome.instances == 2
    (task_id,) = Assembler(state, [], quiet_period_s=0).tick()[:1] or [None]
    assert task_id is not None
    assert state.task(task_id).rule == "request by aifi edge request"
    held = {row.study_instance_uid for row, _p, _d in state.task_instances(task_id)}
    assert held == {current}  # the task's own instances; priors travel beside them
    assert [r.study_instance_uid for r in state.instances(prior)] == [prior]
    (event,) = [e for e in state.task_events(task_id) if e["kind"] == "priors-pulled"]
    assert "1 instances of 1 prior studies" in event["detail"]
    state.close()


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture
def dicomweb_orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc with its DICOMweb plugin (Debian package orthanc-dicomweb)."""
    if not orthanc_available() or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    extra = {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with start_orthanc(tmp_path / "orthanc-web", extra_config=extra, stop_grace_s=0.5) as server:
        yield server


def test_a_dicomweb_pacs_is_searched_by_qido_and_read_by_wado(
    tmp_path: Path, dicomweb_orthanc: Orthanc
) -> None:
    orthanc = dicomweb_orthanc
    patient = "PH-WEB-1"
    current = put_into_orthanc(
        orthanc,
        hand_study("ACC-WEB", patient_id=patient, date=dt.date(2026, 1, 15), seed=7),
        tmp_path / "now",
    )
    prior = put_into_orthanc(
        orthanc,
        hand_study("ACC-WEB-0", patient_id=patient, date=dt.date(2025, 9, 1), seed=8),
        tmp_path / "prior",
    )
    config = edge_toml(tmp_path, orthanc, hub_url="http://127.0.0.1:9", token="x", method="get")
    text = config.read_text().replace('method = "get"', 'method = "dicomweb"')
    config.write_text(text + f'url = "http://127.0.0.1:{orthanc.http_port}/dicom-web"\n')
    settings = load_edge_settings(config)
    state = EdgeState(settings.data_dir / "edge.db")
    outcome = pull_study(
        settings,
        peer_named(settings, "pacs"),
        accession="ACC-WEB",
        algorithm_id="bone-age",
        priors=Priors(years=1),
        state=state,
    )
    assert outcome.ok, outcome.detail
    assert "2 instances retrieved by WADO-RS" in outcome.detail
    assert (outcome.study_instance_uid, outcome.prior_study_uids) == (current, [prior])
    (row,) = state.instances(current)
    assert pydicom.dcmread(row.path).SOPInstanceUID == row.sop_instance_uid  # a whole Part 10 file
    (task_id,) = Assembler(state, [], quiet_period_s=0).tick()[:1]
    assert state.instances(prior)
    assert [e["kind"] for e in state.task_events(task_id)].count("priors-pulled") == 1
    state.close()


def test_a_manifest_can_ask_for_priors() -> None:
    from aifi.algorithms.registry import get

    manifest = get("bone-age").manifest
    assert manifest.priors == Priors(years=2, same_body_part=True, max_studies=1)  # compared
    asking = dataclasses.replace(manifest, priors=Priors(years=3, same_body_part=True))
    assert asking.priors == Priors(years=3.0, same_body_part=True, max_studies=3)
    with pytest.raises(ValueError, match="years"):
        Priors(years=0)


def test_a_move_to_a_destination_the_pacs_does_not_know_says_so(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    put_into_orthanc(
        orthanc,
        hand_study("ACC-LOST", patient_id="PH-LOST", date=dt.date(2026, 1, 15), seed=9),
        tmp_path / "modality",
    )
    config = edge_toml(tmp_path, orthanc, hub_url="http://127.0.0.1:9", token="x", method="move")
    config.write_text(config.read_text() + 'move_destination = "NOWHERE"\n')
    settings = load_edge_settings(config)
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", settings.listener.port)
    state = EdgeState(settings.data_dir / "edge.db")
    outcome = pull_study(
        settings,
        peer_named(settings, "pacs"),
        accession="ACC-LOST",
        algorithm_id="bone-age",
        state=state,
    )
    assert outcome.status == "failed"
    assert "answered the C-MOVE with 0x" in outcome.detail
    assert [e["kind"] for e in state.events()][-1] == "pull-failed"
    state.close()
