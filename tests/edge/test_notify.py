"""Urgent results as a RIS can file them: HL7 v2.5.1 ORU^R01 and FHIR R4 DiagnosticReport.

The ORU is parsed back by hl7apy with strict validation (message structure,
data types, lengths of v2.5.1) after a real MLLP listener received it; the
FHIR Bundle is read back with ``fhir.resources`` (R4B models, which for
DiagnosticReport and Observation are the R4 resources).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from aifi.demo.ris import DemoRis
from aifi.demo.samples import DEMO_PATIENTS, cr_study
from aifi.edge.fhir import FhirPeer, build_report_bundle, post_bundle
from aifi.edge.notify import RisPeer, build_oru, send_mllp
from aifi.errors import DeliveryError
from aifi.netutil import free_port
from peers.fhir import FhirServer, check_report_bundle
from peers.hl7_check import strict

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
    "demo_model": True,
}
OBSERVED = datetime(2026, 12, 1, 9, 45, 12, tzinfo=UTC)


@pytest.fixture
def ris() -> Iterator[DemoRis]:
    """A real MLLP listener (python-hl7's asyncio server) that acknowledges each message."""
    listener = DemoRis()
    listener.start()
    yield listener
    listener.stop()


def test_urgent_result_is_acknowledged_by_the_ris(ris: DemoRis) -> None:
    original = cr_study(1, patient=DEMO_PATIENTS[2], rows=16, columns=16)[0]
    peer = RisPeer(host="127.0.0.1", port=ris.port, patient_id_authority="STEXAMPLE&1.2.3.4&ISO")
    message = build_oru(
        peer,
        original,
        task_id="task-1",
        algorithm_id="incidental-pe",
        algorithm_version="0.2.0",
        findings=FINDINGS,
        control_id="c1",
        observed_at=OBSERVED,
    )
    assert send_mllp(peer, message) == "AA"
    (received,) = ris.messages
    parsed = strict(str(received))
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert parsed.msh.msh_12.to_er7() == "2.5.1"
    assert not parsed.msh.msh_18.to_er7()  # all ASCII: no character set named
    result = parsed.oru_r01_patient_result
    pid = result.oru_r01_patient.pid
    assert pid.pid_3.cx_1.to_er7() == original.PatientID
    assert pid.pid_3.cx_4.to_er7() == "STEXAMPLE&1.2.3.4&ISO"
    assert pid.pid_3.cx_5.to_er7() == "MR"
    assert pid.pid_5.xpn_1.to_er7() == original.PatientName.family_name
    order = result.oru_r01_order_observation
    assert order.orc.orc_1.to_er7() == "RE"
    assert order.orc.orc_3.ei_1.to_er7() == original.AccessionNumber
    assert order.obr.obr_3.ei_1.to_er7() == original.AccessionNumber
    assert order.obr.obr_18.to_er7() == original.AccessionNumber  # IHE RAD: Placer Field 1
    assert order.obr.obr_25.to_er7() == "F"
    observations = [group.obx for group in order.oru_r01_observation]
    critical = [obx for obx in observations if obx.obx_8.to_er7() == "AA"]
    assert len(critical) == 1
    assert critical[0].obx_5.to_er7() == "59282003^Pulmonary embolism^SCT"
    for obx in observations:
        assert obx.obx_14.to_er7().startswith("20261201094512")
        assert obx.obx_18.to_er7() == "incidental-pe 0.2.0^AIFI"
    numeric = [obx for obx in observations if obx.obx_2.to_er7() == "NM"]
    assert numeric[0].obx_5.to_er7() == "0.93"
    text = next(obx for obx in observations if obx.obx_2.to_er7() == "TX")
    assert received.unescape(text.obx_5.to_er7()).startswith(FINDINGS["summary"])
    assert "demo model" in text.obx_5.to_er7()


def test_a_non_ascii_name_is_sent_as_utf8_and_says_so(ris: DemoRis) -> None:
    original = cr_study(1, patient=DEMO_PATIENTS[2], rows=16, columns=16)[0]
    original.SpecificCharacterSet = "ISO 2022 IR 6\\ISO 2022 IR 87"
    original.PatientName = "ヤマダ^タロウ=山田^太郎"
    peer = RisPeer(host="127.0.0.1", port=ris.port)
    message = build_oru(
        peer,
        original,
        task_id="task-2",
        algorithm_id="incidental-pe",
        algorithm_version="0.2.0",
        findings=FINDINGS,
        control_id="c2",
    )
    assert send_mllp(peer, message) == "AA"
    (received,) = ris.messages
    parsed = strict(str(received))
    assert parsed.msh.msh_18.to_er7() == "UNICODE UTF-8"
    pid = parsed.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_5.xpn_1.to_er7() == "ヤマダ"


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


def test_urgent_result_as_fhir_diagnostic_report() -> None:
    original = cr_study(1, patient=DEMO_PATIENTS[2], rows=16, columns=16)[0]
    with FhirServer() as server:
        peer = FhirPeer(base_url=server.url, patient_identifier_system="urn:oid:1.2.3.4")
        bundle = build_report_bundle(
            peer,
            original,
            task_id="task-3",
            algorithm_id="incidental-pe",
            algorithm_version="0.2.0",
            findings=FINDINGS,
            observed_at=OBSERVED,
        )
        assert post_bundle(peer, bundle) == 200
        (received,) = server.bundles
        report = check_report_bundle(received, original)
        assert report.subject.identifier.system == "urn:oid:1.2.3.4"
        assert len(report.result) == 2  # the finding and the probability
        quantities = [
            e["resource"]["valueQuantity"]
            for e in received["entry"]
            if "valueQuantity" in e["resource"]
        ]
        assert quantities == [
            {"value": 0.93, "unit": "no units", "system": "http://unitsofmeasure.org", "code": "1"}
        ]
        server.status = 422
        with pytest.raises(DeliveryError, match="refused"):
            post_bundle(peer, bundle)
    with pytest.raises(DeliveryError, match="unreachable"):
        post_bundle(FhirPeer(base_url=f"http://127.0.0.1:{free_port()}", timeout_s=2), bundle)
