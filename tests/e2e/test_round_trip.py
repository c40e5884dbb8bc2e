"""The round trip with real peers.

dcmtk's storescu is the modality, Orthanc (Debian package) the hospital's
PACS. Orthanc forwards the study to the edge through its REST API (as an
auto-routing rule would); the edge pseudonymizes and uploads to the hub (a
separate process); the hub runs ``integrity-check``; the edge fetches the SR,
re-identifies it and stores it into Orthanc.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from aifi.demo.samples import DEMO_PATIENTS, cr_study, write_study
from aifi.edge.config import DicomPeer, EdgeSettings, HubPeer, ListenerSettings
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from peers.dcmtk import storescu
from peers.orthanc import Orthanc
from peers.postgres import pg_dump
from results.helpers import dciodvfy_errors

from .conftest import HUB_ON_BOTH_DATABASES, HubProcess

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]


@pytest.fixture
def edge(tmp_path: Path, hub: HubProcess, orthanc: Orthanc) -> Iterator[EdgeService]:
    settings = EdgeSettings(
        data_dir=tmp_path / "edge",
        quiet_period_s=0.5,
        listener=ListenerSettings(port=0, allowed_calling_aets=[orthanc.aet]),
        hub=HubPeer(
            url=hub.url,
            token=hub.add_hospital("St. Example"),
            poll_interval_s=0.1,
            max_backoff_s=1.0,
        ),
        pacs=DicomPeer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port),
        rules=[Rule(name="connection test", algorithm="integrity-check")],
    )
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    yield service
    service.stop()


def send_study_through_orthanc(orthanc: Orthanc, tmp_path: Path, n: int = 4) -> list[Path]:
    files = write_study(
        cr_study(n, patient=DEMO_PATIENTS[1], rows=256, columns=256), tmp_path / "modality"
    )
    result = storescu(
        files, "127.0.0.1", orthanc.dicom_port, calling_aet="MODALITY", called_aet=orthanc.aet
    )
    assert result.returncode == 0, result.stderr
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    instances = orthanc.find_instances(StudyInstanceUID=study_uid)
    assert len(instances) == n
    orthanc.store_to("aifi", instances)
    return files


def referenced_uids(ds: pydicom.Dataset) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in ``ds``."""
    found: set[str] = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            found.add(str(elem.value))
    return found


def wait_for_sr(orthanc: Orthanc, study_uid: str, timeout: float = 60) -> list[pydicom.Dataset]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
        if ids:
            return [orthanc.dataset(i) for i in ids]
        time.sleep(0.2)
    raise AssertionError(f"no SR arrived in Orthanc within {timeout} s")


def wait_delivered(edge: EdgeService, timeout: float = 30) -> None:
    """The SR can be in PACS a moment before the edge records the delivery."""
    deadline = time.monotonic() + timeout
    while not all(t.state == "delivered" for t in edge.state.tasks()):
        assert time.monotonic() < deadline, [(t.state, t.reason) for t in edge.state.tasks()]
        time.sleep(0.05)


def hub_bytes(hub: HubProcess) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(hub.folder.rglob("*")):
        if path.is_file() and path.suffix != ".log":
            yield path, path.read_bytes()
    if hub.database_url is not None:  # PostgreSQL: everything the database holds, as text
        yield Path("pg_dump"), pg_dump(hub.database_url)


@HUB_ON_BOTH_DATABASES
def test_result_lands_in_the_original_study_and_the_hub_holds_no_identity(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess, edge: EdgeService
) -> None:
    files = send_study_through_orthanc(orthanc, tmp_path)
    originals = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    study_uid = str(originals[0].StudyInstanceUID)
    (sr,) = wait_for_sr(orthanc, study_uid)

    # in PACS: same study, same patient, references only original images held there
    assert sr.StudyInstanceUID == study_uid
    assert sr.PatientID == originals[0].PatientID
    assert str(sr.PatientName) == str(originals[0].PatientName)
    assert sr.AccessionNumber == originals[0].AccessionNumber
    original_sops = {str(o.SOPInstanceUID) for o in originals}
    refs = referenced_uids(sr)
    assert refs == original_sops
    in_orthanc = {
        str(orthanc.get_tags(i)["SOPInstanceUID"])
        for i in orthanc.find_instances(StudyInstanceUID=study_uid)
    }
    assert refs <= in_orthanc
    # an identified object that says so, valid, and parsed back by highdicom
    assert sr.get("PatientIdentityRemoved") != "YES"
    assert "DeidentificationMethod" not in sr
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    parsed = hd.sr.srread(path)
    procedure = [
        item
        for item in parsed.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "121058"  # Procedure Reported (DCM)
    ]
    assert procedure and procedure[0].ConceptCodeSequence[0].CodeValue

    wait_delivered(edge)
    (task,) = edge.state.tasks()
    assert task.verified is True, task.verification

    # at the hub: no byte of identity, no original UID, in any file it stored
    secrets = {originals[0].PatientID, str(originals[0].PatientName), originals[0].AccessionNumber}
    for o in originals:
        secrets |= {str(o.StudyInstanceUID), str(o.SeriesInstanceUID), str(o.SOPInstanceUID)}
    scanned = 0
    for path, content in hub_bytes(hub):
        scanned += 1
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} found in hub file {path}"
    if hub.database_url is None:
        assert scanned > len(files)  # the instances, the result and the database were scanned
    else:  # the result files and the pg_dump (the instances may be purged already)
        assert scanned >= 2


@HUB_ON_BOTH_DATABASES
def test_killing_the_hub_after_upload_loses_nothing(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess, edge: EdgeService
) -> None:
    files = send_study_through_orthanc(orthanc, tmp_path)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    deadline = time.monotonic() + 30
    while not any(t.state not in ("pending", "ready") for t in edge.state.tasks()):
        assert time.monotonic() < deadline, "the edge never uploaded the study"
        time.sleep(0.02)
    hub.kill()
    time.sleep(1.0)  # the edge meets a hub that is down
    hub.start()
    srs = wait_for_sr(orthanc, study_uid)
    time.sleep(1.0)  # a duplicate, if any, would arrive now
    srs = [
        orthanc.dataset(i)
        for i in orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
    ]
    assert len(srs) == 1
    wait_delivered(edge)
    (task,) = edge.state.tasks()
    assert len(edge.state.deliveries(task.id)) == 1


@HUB_ON_BOTH_DATABASES
def test_a_hub_that_is_down_delays_but_does_not_lose(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess, edge: EdgeService
) -> None:
    hub.stop()
    files = send_study_through_orthanc(orthanc, tmp_path, n=2)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    deadline = time.monotonic() + 20
    while not edge.state.tasks() or edge.state.tasks()[0].attempts < 1:
        assert time.monotonic() < deadline, "the edge did not try the hub"
        time.sleep(0.1)
    (task,) = edge.state.tasks()
    assert task.state in ("pending", "ready") and "unreachable" in (task.reason or "")
    hub.start()
    wait_for_sr(orthanc, study_uid)
    wait_delivered(edge)
