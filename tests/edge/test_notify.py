"""Urgent results reach a real MLLP listener as HL7 v2.5.1 ORU^R01."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aifi.demo.ris import DemoRis
from aifi.demo.samples import DEMO_PATIENTS, cr_study
from aifi.edge.notify import RisPeer, build_oru, send_mllp
from aifi.errors import DeliveryError
from aifi.netutil import free_port

FINDINGS = {
    "summary": "Pulmonary embolism suspected | right lower lobe",
    "finding": {"value": "59282003", "scheme": "SCT", "meaning": "Pulmonary embolism"},
    "urgent": True,
    "measurements": [
        {
            "concept": {"value": "PEPROB", "scheme": "99AIFI", "meaning": "PE probability"},
            "value": 0.93,
            "unit": {"value": "1", "scheme": "UCUM", "meaning": "no units"},
        },
    ],
}


@pytest.fixture
def ris() -> Iterator[DemoRis]:
    """A real MLLP listener (python-hl7's asyncio server) that acknowledges each message."""
    listener = DemoRis()
    listener.start()
    yield listener
    listener.stop()


def test_urgent_result_is_acknowledged_by_the_ris(ris: DemoRis) -> None:
    original = cr_study(1, patient=DEMO_PATIENTS[2], rows=16, columns=16)[0]
    peer = RisPeer(host="127.0.0.1", port=ris.port)
    message = build_oru(
        peer,
        original,
        task_id="task-1",
        algorithm_id="incidental-pe",
        algorithm_version="0.1.0",
        findings=FINDINGS,
        control_id="c1",
    )
    assert send_mllp(peer, message) == "AA"
    (received,) = ris.messages
    assert str(received.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    pid = received.segment("PID")
    assert str(pid[3][0][0]) == original.PatientID
    assert str(pid[5][0][0]) == original.PatientName.family_name
    obr = received.segment("OBR")
    assert str(obr[2]) == original.AccessionNumber
    assert str(obr[25]) == "F"
    observations = received.segments("OBX")
    critical = [obx for obx in observations if str(obx[8]) == "AA"]
    assert len(critical) == 1 and "Pulmonary embolism" in str(critical[0][3])
    numeric = [obx for obx in observations if str(obx[2]) == "NM"]
    assert str(numeric[0][5]) == "0.93"
    text = next(obx for obx in observations if str(obx[2]) == "TX")
    assert received.unescape(str(text[5])) == FINDINGS["summary"]  # the | survived escaped


def test_a_rejecting_or_absent_ris_is_an_error_to_retry(ris: DemoRis) -> None:
    original = cr_study(1, rows=16, columns=16)[0]
    peer = RisPeer(host="127.0.0.1", port=ris.port)
    message = build_oru(
        peer,
        original,
        task_id="t",
        algorithm_id="incidental-pe",
        algorithm_version=None,
        findings=FINDINGS,
        control_id="c2",
    )
    ris.ack_code = "AE"
    with pytest.raises(DeliveryError, match="rejected"):
        send_mllp(peer, message)
    with pytest.raises(DeliveryError, match="unreachable"):
        send_mllp(RisPeer(host="127.0.0.1", port=free_port(), timeout_s=2), message)
