"""Orders from the RIS on the hospital's path: HL7 over MLLP and FHIR, study pulled from PACS.

Orthanc is the PACS and the query/retrieve peer (its DICOM Q/R is built
in); dcmtk's storescu puts the modality's images into it. The edge runs as
``aifi edge serve`` from its edge.toml with ``[orders]``; the hub is
``aifi hub serve`` running bone-age. The RIS is played by this test: ER7
messages framed by MLLP over a socket, as an interface engine sends them,
and a FHIR ServiceRequest POSTed with httpx. No routing rule exists: every
task is there because an order asked for it, and its SR lands in Orthanc
inside the original study.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from aifi.edge.state import EdgeState, TaskRow
from aifi.netutil import free_port
from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.hand import bone_age_study
from aifi.phantoms.write import write_study
from peers.dcmtk import storescu
from peers.orthanc import Orthanc

from .conftest import EdgeProcess, HubProcess

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]

PASSWORD = "orders-e2e-admin"


@dataclass
class Edge:
    process: EdgeProcess
    mllp_port: int
    status_url: str

    def tasks(self) -> list[TaskRow]:
        state = EdgeState(self.process.folder / "data" / "edge.db")
        try:
            return state.tasks()
        finally:
            state.close()

    def events(self, kind: str) -> list[dict[str, Any]]:
        state = EdgeState(self.process.folder / "data" / "edge.db")
        try:
            return state.events(kind)
        finally:
            state.close()


@pytest.fixture
def edge(tmp_path: Path, hub: HubProcess, orthanc: Orthanc) -> Iterator[Edge]:
    folder = tmp_path / "edge"
    folder.mkdir()
    dicom_port, mllp_port, status_port = free_port(), free_port(), free_port()
    token = hub.add_hospital("St. Example", subscribe="bone-age")
    orthanc.add_modality("aifi", "AIFI_EDGE", "127.0.0.1", dicom_port)  # C-MOVE destination
    process = EdgeProcess(
        folder,
        f"""\
hospital = "St. Example"
data_dir = "data"
quiet_period_s = 0.5

[listener]
ae_title = "AIFI_EDGE"
port = {dicom_port}
allowed_calling_aets = ["{orthanc.aet}"]
min_free_bytes = 0

[hub]
url = "{hub.url}"
token = "{token}"
poll_interval_s = 0.1
max_backoff_s = 1

[pacs]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[status]
port = {status_port}
admin_password = "{PASSWORD}"

[[query_retrieve]]
name = "pacs"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
method = "move"

[orders]
port = {mllp_port}
wait_for_images_s = 120
retry_interval_s = 0.5

[orders.codes]
XRHANDBA = "bone-age"
""",
    )
    process.start(dicom_port)
    wait_until(lambda: _listening(mllp_port), 15, "the MLLP listener did not start")
    yield Edge(process, mllp_port, f"http://127.0.0.1:{status_port}")
    process.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def hand_study(orthanc: Orthanc, folder: Path, accession: str, seed: int) -> str:
    """The modality sends a bone-age hand radiograph to the PACS; its Study Instance UID."""
    context = StudyContext(
        patient_name="PHANTOM^ORDER",
        patient_id=f"PH-{accession}",
        patient_sex="F",
        age_months=121,
        study_date=dt.date(2026, 1, 15),
        accession_number=accession,
        study_description="XR HAND BONE AGE",
    )
    datasets = list(bone_age_study(age_months=121, sex="F", seed=seed, study=context))
    files = write_study(datasets, folder / accession)
    done = storescu(
        files, "127.0.0.1", orthanc.dicom_port, calling_aet="MODALITY", called_aet=orthanc.aet
    )
    assert done.returncode == 0, done.stderr
    return str(datasets[0].StudyInstanceUID)


def mllp(port: int, message: str) -> str:
    """Send one HL7 message framed by MLLP; the ACK the edge answers with."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\x0d")
        reply = b""
        while not reply.endswith(b"\x1c\x0d"):
            chunk = sock.recv(65536)
            assert chunk, "no ACK"
            reply += chunk
    return reply[1:-2].decode()


def msa(ack: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")


def orm(control: str, order: str, accession: str, *, code: str = "XRHANDBA") -> str:
    """ORM^O01 v2.3 (IHE RAD-4, v2.3.1 option): OBR-18 is the accession number."""
    obr = ["OBR", "1", order, f"F-{order}", f"{code}^Hand bone age^L"] + [""] * 13 + [accession]
    return "\r".join(
        [
            f"MSH|^~\\&|RIS|HOSP|AIFI|EDGE|20260115093000||ORM^O01|M-{order}-{control}|P|2.3",
            f"PID|1||PH-{accession}^^^HOSP||PHANTOM^ORDER||20150101|F",
            f"ORC|{control}|{order}|F-{order}||SC||^^^^^R",
            "|".join(obr),
        ]
    )


def omi_stat(order: str, accession: str) -> str:
    """OMI^O23 v2.5.1 (IHE RAD-4, v2.5.1 option): TQ1-9 S is stat, IPC-1 the accession."""
    return "\r".join(
        [
            f"MSH|^~\\&|RIS|HOSP|AIFI|EDGE|20260115093000||OMI^O23^OMI_O23|M-{order}|P|2.5.1",
            f"PID|1||PH-{accession}^^^HOSP||PHANTOM^ORDER||20150101|F",
            f"ORC|NW|{order}|F-{order}",
            "TQ1|1||||||||S",
            f"OBR|1|{order}|F-{order}|XRHANDBA^Hand bone age^L",
            f"IPC|{accession}|RP-{order}||SPS-{order}|DX",
        ]
    )


def service_request(accession: str, priority: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "priority": priority,
        "subject": {"reference": f"Patient/PH-{accession}"},
        "code": {"coding": [{"system": "urn:oid:1.2.3.4.5", "code": "XRHANDBA"}]},
        "identifier": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": accession,
            }
        ],
    }


def sr_in(orthanc: Orthanc, study_uid: str) -> pydicom.Dataset | None:
    ids = orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
    return orthanc.dataset(ids[0]) if ids else None


def test_orders_by_hl7_and_fhir_pull_the_study_and_the_result_lands_in_pacs(
    tmp_path: Path, orthanc: Orthanc, edge: Edge
) -> None:
    # An order that arrives before its images: the study is still at the modality.
    ack = mllp(edge.mllp_port, orm("NW", "PLC-E1", "ACC-E1"))
    assert msa(ack)[1] == "AA", ack
    wait_until(lambda: edge.events("order-waiting"), 30, "the early order did not wait")
    early = hand_study(orthanc, tmp_path, "ACC-E1", seed=21)

    # A stat OMI and a FHIR ServiceRequest for studies the PACS already has.
    stat = hand_study(orthanc, tmp_path, "ACC-E2", seed=22)
    assert msa(mllp(edge.mllp_port, omi_stat("PLC-E2", "ACC-E2")))[1] == "AA"
    by_fhir = hand_study(orthanc, tmp_path, "ACC-E3", seed=23)
    response = httpx.post(
        f"{edge.status_url}/fhir/ServiceRequest",
        json=service_request("ACC-E3", "urgent"),
        headers={"Authorization": f"Bearer {PASSWORD}"},
    )
    assert response.status_code == 201, response.text
    location = response.headers["location"]

    studies = {early: "MEDIUM", stat: "HIGH", by_fhir: "HIGH"}
    wait_until(
        lambda: all(sr_in(orthanc, uid) is not None for uid in studies),
        240,
        f"not every SR arrived: {[(t.state, t.reason) for t in edge.tasks()]}",
    )
    for uid in studies:
        sr = sr_in(orthanc, uid)
        assert sr is not None and sr.PatientName == "PHANTOM^ORDER"  # re-identified, in place
    tasks = {t.study_instance_uid: t for t in edge.tasks()}
    assert set(tasks) == set(studies)  # one task per order, nothing else
    rank = {"HIGH": 0, "MEDIUM": 1}
    for uid, priority in studies.items():
        assert tasks[uid].priority == rank[priority], uid
        assert tasks[uid].rule.startswith("request by order ")
    moved = [e["detail"] for e in edge.events("pull-requested")]
    assert len(moved) == 3 and all("retrieved by C-MOVE from pacs" in d for d in moved)
    wait_until(
        lambda: (
            httpx.get(location, headers={"Authorization": f"Bearer {PASSWORD}"}).json()["status"]
            == "completed"
        ),
        30,
        "the ServiceRequest did not become completed once its result was in PACS",
    )
    trail = " ".join(e["detail"] for e in edge.events("order-received"))
    assert "PHANTOM" not in trail and "PH-ACC" not in trail  # no patient in the audit trail


def test_bad_orders_are_refused_with_the_reason_and_a_cancel_cancels(
    tmp_path: Path, orthanc: Orthanc, edge: Edge
) -> None:
    unmapped = mllp(edge.mllp_port, orm("NW", "PLC-X1", "ACC-X1", code="CTHEAD"))
    assert msa(unmapped)[1] == "AE"
    assert "order code CTHEAD is not mapped to an algorithm" in unmapped
    not_an_order = mllp(edge.mllp_port, orm("NW", "PLC-X2", "ACC-X2").replace("ORM^O01", "ADT^A08"))
    assert msa(not_an_order)[1] == "AR" and "is not an order" in not_an_order
    broken = mllp(edge.mllp_port, orm("NW", "PLC-X3", "ACC-X3") + "\rQQQ|what")
    assert msa(broken)[1] == "AE" and "not valid HL7 v2" in broken

    # Ordered, then canceled while its images are still at the modality.
    assert msa(mllp(edge.mllp_port, orm("NW", "PLC-X4", "ACC-X4")))[1] == "AA"
    wait_until(lambda: edge.events("order-waiting"), 30, "the order did not wait")
    canceled = mllp(edge.mllp_port, orm("CA", "PLC-X4", "ACC-X4"))
    assert msa(canceled)[1] == "AA" and "order PLC-X4 canceled" in canceled
    study = hand_study(orthanc, tmp_path, "ACC-X4", seed=24)
    time.sleep(3.0)  # six retry intervals: a live order would have been pulled by now
    assert not edge.tasks()
    assert not edge.events("pull-requested")
    (event,) = edge.events("order-canceled")
    assert "canceled by the order placer" in event["detail"]
    assert study not in event["detail"]  # it was never found: the order ended first
    again = mllp(edge.mllp_port, orm("CA", "PLC-NONE", "ACC-NONE"))
    assert msa(again)[1] == "AE" and "no open order PLC-NONE to cancel" in again
