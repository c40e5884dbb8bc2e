"""An urgent finding on the hospital's path: PACS and RIS (and FHIR) with real peers.

dcmtk's storescu sends a contrast chest CT with an embolus to Orthanc (the
PACS); Orthanc forwards it to the edge (``aifi edge serve`` from its
edge.toml, a process we can SIGKILL); the hub (``aifi hub serve``) runs
``incidental-pe``; the edge stores SR, GSPS and SC into Orthanc and then
announces the result to the RIS (a real MLLP listener) and to a FHIR
server. What lands is checked as a radiologist's systems would see it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from aifi.demo.ris import DemoRis
from aifi.edge.state import EdgeState
from aifi.netutil import free_port
from aifi.phantoms.chest_ct import chest_ct_series
from peers.dcmtk import storescu
from peers.fhir import FhirServer, check_report_bundle
from peers.hl7_check import strict
from peers.orthanc import Orthanc
from results.helpers import dciodvfy_errors

from .conftest import EdgeProcess, HubProcess

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]

PULMONARY_EMBOLISM = "59282003"  # SNOMED CT


@pytest.fixture
def ris() -> Iterator[DemoRis]:
    listener = DemoRis()
    listener.start()
    yield listener
    listener.stop()


@pytest.fixture
def fhir() -> Iterator[FhirServer]:
    with FhirServer() as server:
        yield server


@pytest.fixture
def edge(
    tmp_path: Path, hub: HubProcess, orthanc: Orthanc, ris: DemoRis, fhir: FhirServer
) -> Iterator[EdgeProcess]:
    folder = tmp_path / "edge"
    folder.mkdir()
    port = free_port()
    token = hub.add_hospital("St. Example", subscribe="incidental-pe")
    process = EdgeProcess(
        folder,
        f"""\
environment = "development"
hospital = "St. Example"
data_dir = "data"
quiet_period_s = 1

[listener]
ae_title = "AIFI_EDGE"
host = "127.0.0.1"
port = {port}
allowed_calling_aets = ["{orthanc.aet}"]

[hub]
url = "{hub.url}"
token = "{token}"
poll_interval_s = 0.1
max_backoff_s = 1

[pacs]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[ris]
host = "127.0.0.1"
port = {ris.port}
patient_id_authority = "STEXAMPLE&1.2.826.0.1.3680043.10.1234&ISO"
timeout_s = 3

[fhir]
base_url = "{fhir.url}"
patient_identifier_system = "urn:oid:1.2.826.0.1.3680043.10.1234"

[[rules]]
name = "CT for incidental PE"
algorithm = "incidental-pe"
match = {{ Modality = ["CT"] }}
""",
    )
    process.start(port)
    orthanc.add_modality("aifi", "AIFI_EDGE", "127.0.0.1", port)
    yield process
    process.stop()


def send_ct(orthanc: Orthanc, tmp_path: Path) -> list[pydicom.Dataset]:
    series = chest_ct_series(embolus=True, seed=5)
    folder = tmp_path / "modality"
    folder.mkdir()
    files = []
    for index, ds in enumerate(series):
        path = folder / f"{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    done = storescu(
        files, "127.0.0.1", orthanc.dicom_port, calling_aet="CT01", called_aet=orthanc.aet
    )
    assert done.returncode == 0, done.stderr
    study_uid = str(series[0].StudyInstanceUID)
    ids = orthanc.wait_for_instances(len(series), StudyInstanceUID=study_uid)
    orthanc.store_to("aifi", ids)
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def edge_tasks(edge: EdgeProcess) -> list:  # type: ignore[type-arg]
    state = EdgeState(edge.folder / "data" / "edge.db")
    try:
        return state.tasks()
    finally:
        state.close()


def path_of(folder: Path, ds: pydicom.Dataset) -> Path:
    return folder / f"{ds.SOPInstanceUID}.dcm"


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def coded_values(ds: pydicom.Dataset) -> set[str]:
    """Every coded value (CODE content items) in an SR's content tree."""
    return {
        str(elem.value[0].CodeValue)
        for elem in ds.iterall()
        if elem.keyword == "ConceptCodeSequence" and elem.value
    }


def test_urgent_pe_reaches_pacs_ris_and_fhir_once(
    tmp_path: Path,
    orthanc: Orthanc,
    hub: HubProcess,
    edge: EdgeProcess,
    ris: DemoRis,
    fhir: FhirServer,
) -> None:
    originals = send_ct(orthanc, tmp_path)
    study_uid = str(originals[0].StudyInstanceUID)
    wait_until(
        lambda: [t.state for t in edge_tasks(edge)] == ["delivered"],
        240,
        f"task not delivered: {[(t.state, t.reason) for t in edge_tasks(edge)]}",
    )
    (task,) = edge_tasks(edge)
    assert task.urgent and (task.notification or "").startswith("sent")

    # in PACS: SR, GSPS and SC, identified, valid, coded
    results = [
        orthanc.dataset(i)
        for i in orthanc.find_instances(StudyInstanceUID=study_uid)
        if orthanc.get_tags(i).get("Modality") in ("SR", "PR", "OT")
        or str(orthanc.get_tags(i).get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.7")
    ]
    modalities = sorted(str(ds.Modality) for ds in results)
    assert "SR" in modalities and "PR" in modalities, modalities
    assert len(results) == 3, modalities
    for ds in results:
        assert ds.PatientID == originals[0].PatientID
        assert str(ds.PatientName) == str(originals[0].PatientName)
        assert ds.AccessionNumber == originals[0].AccessionNumber
        assert ds.get("PatientIdentityRemoved") != "YES"
        assert "DeidentificationMethod" not in ds
        path = path_of(tmp_path, ds)
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], ds.Modality
    assert len({ds.SeriesNumber for ds in results}) == len(results)
    (sr,) = [ds for ds in results if ds.Modality == "SR"]
    parsed = hd.sr.srread(path_of(tmp_path, sr))  # highdicom parses it back
    assert PULMONARY_EMBOLISM in coded_values(parsed)

    # at the RIS: exactly one ORU^R01, the original patient, valid v2.5.1
    wait_until(lambda: len(ris.messages) >= 1, 10, "no ORU at the RIS")
    time.sleep(1.0)  # a duplicate, if any, would arrive now
    assert len(ris.messages) == 1
    oru = strict(str(ris.messages[0]))
    pid = oru.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.cx_1.to_er7() == originals[0].PatientID
    assert pid.pid_3.cx_4.to_er7().startswith("STEXAMPLE&")
    order = oru.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_18.to_er7() == originals[0].AccessionNumber
    flags = [g.obx.obx_8.to_er7() for g in order.oru_r01_observation]
    assert "AA" in flags
    (tmp_path / "oru.hl7").write_text(str(ris.messages[0]).replace("\r", "\n"))

    # at the FHIR server: one transaction Bundle with the DiagnosticReport
    assert len(fhir.bundles) == 1
    (tmp_path / "fhir-bundle.json").write_text(json.dumps(fhir.bundles[0], indent=2))
    check_report_bundle(fhir.bundles[0], originals[0], finding_code=PULMONARY_EMBOLISM)

    # the edge's audit trail has each step
    state = EdgeState(edge.folder / "data" / "edge.db")
    kinds = [e["kind"] for e in state.task_events(task.id)]
    state.close()
    assert kinds.count("urgent-notified") == 2  # HL7 and FHIR
    assert kinds.index("task-delivered") > kinds.index("urgent-notified")


def test_an_edge_killed_before_the_ris_ack_sends_the_oru_again(
    tmp_path: Path,
    orthanc: Orthanc,
    hub: HubProcess,
    edge: EdgeProcess,
    ris: DemoRis,
) -> None:
    ris.hold = True  # the RIS takes the message but does not answer yet
    send_ct(orthanc, tmp_path)
    wait_until(lambda: len(ris.messages) >= 1, 240, "no ORU reached the RIS")
    edge.kill()
    ris.hold = False
    edge.start(int(edge.config.read_text().split("port = ")[1].split()[0]))
    wait_until(
        lambda: [t.state for t in edge_tasks(edge)] == ["delivered"],
        60,
        f"task not delivered: {[(t.state, t.reason) for t in edge_tasks(edge)]}",
    )
    assert len(ris.messages) == 2  # sent again, never lost; the RIS may see it twice
    (task,) = edge_tasks(edge)
    state = EdgeState(edge.folder / "data" / "edge.db")
    events = state.task_events(task.id)
    state.close()
    attempts = [e for e in events if e["kind"] == "urgent-notify-attempt"]
    assert len([a for a in attempts if a["detail"].startswith("HL7")]) == 2
    assert [e for e in events if e["kind"] == "urgent-notified" and "HL7" in e["detail"]]
