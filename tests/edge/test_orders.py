"""Orders from the RIS at the edge: HL7 ORM/OMI over a real MLLP socket, FHIR ServiceRequest.

The messages are built as a RIS builds them (ER7 text, IHE RAD-4 fields),
sent framed by MLLP over loopback to the edge's listener, and the ACK read
back and parsed by hl7apy (strictly for v2.5.1). The desk works on the
edge's real state database; no Q/R peer here (tests/e2e/test_orders.py pulls
from Orthanc).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from typer.testing import CliRunner

from aifi.cli import app as cli
from aifi.edge.assembly import Assembler
from aifi.edge.config import EdgeSettings, load_edge_settings
from aifi.edge.orders import OrderDesk
from aifi.edge.orders_config import OrdersSettings
from aifi.edge.orders_fhir import create_orders_router
from aifi.edge.orders_hl7 import MllpListener
from aifi.edge.state import EdgeState, InstanceRow
from aifi.edge.status.server import StatusServer
from aifi.errors import ConfigError
from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.hand import bone_age_study
from aifi.phantoms.write import write_study

TOKEN = "orders-test-password"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77001"


def orm(
    control: str = "NW",
    *,
    order: str = "PLC-1",
    accession: str = "ACC-1",
    code: str = "XRHANDBA",
    priority: str = "R",
    study_uid: str = "",
    version: str = "2.3",
) -> str:
    """ORM^O01 as IHE RAD-4 (HL7 v2.3.1 option) has it: OBR-18 accession, ZDS-1 study."""
    segments = [
        f"MSH|^~\\&|RIS|HOSP|AIFI|EDGE|20260115093000||ORM^O01|MSG-{order}-{control}|P|{version}",
        "PID|1||PH-ORD-1^^^HOSP||PHANTOM^HAND||20150101|F",
        f"ORC|{control}|{order}|FIL-{order}||SC||^^^^^{priority}",
        f"OBR|1|{order}|FIL-{order}|{code}^Hand bone age^L||||||||||||||{accession}|RP-1",
    ]
    if study_uid:
        segments.append(f"ZDS|{study_uid}^100^Application^DICOM")
    return "\r".join(segments) + "\r"


def omi(*, order: str = "PLC-2", priority: str = "S", study_uid: str = STUDY_UID) -> str:
    """OMI^O23 v2.5.1 as IHE RAD-4 (v2.5.1 option): TQ1-9 priority, IPC accession and study."""
    return (
        "\r".join(
            [
                f"MSH|^~\\&|RIS|HOSP|AIFI|EDGE|20260115093000||OMI^O23^OMI_O23|MSG-{order}|P|2.5.1",
                "PID|1||PH-ORD-2^^^HOSP||PHANTOM^HAND||20150101|F",
                f"ORC|NW|{order}|FIL-{order}",
                f"TQ1|1||||||||{priority}",
                f"OBR|1|{order}|FIL-{order}|XRHANDBA^Hand bone age^L",
                f"IPC|ACC-2|RP-2|{study_uid}|SPS-2|DX",
            ]
        )
        + "\r"
    )


def send(port: int, message: str) -> str:
    """One message framed by MLLP, the acknowledgement back (as a RIS's interface engine)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\x0d")
        reply = b""
        while not reply.endswith(b"\x1c\x0d"):
            chunk = sock.recv(65536)
            assert chunk, "the edge closed the connection without an ACK"
            reply += chunk
    return reply[1:-2].decode()


def msa(ack: str) -> tuple[str, str]:
    fields = next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")
    return fields[1], fields[3] if len(fields) > 3 else ""


def errors(ack: str) -> list[list[str]]:
    return [s.split("|") for s in ack.split("\r") if s.startswith("ERR")]


def settings_for(tmp_path: Path, **orders: Any) -> EdgeSettings:
    table = {"codes": {"XRHANDBA": "bone-age"}, "retry_interval_s": 0.05, **orders}
    return EdgeSettings(data_dir=tmp_path / "edge-data", orders=OrdersSettings(**table))


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[OrderDesk]:
    settings = settings_for(tmp_path)
    state = EdgeState(settings.data_dir / "edge.db")
    yield OrderDesk(settings, state)
    state.close()


@pytest.fixture
def mllp(desk: OrderDesk) -> Iterator[MllpListener]:
    listener = MllpListener(desk, "127.0.0.1", 0, max_bytes=1 << 20)
    listener.start()
    yield listener
    listener.stop()


def test_an_orm_is_acknowledged_and_becomes_a_workitem_waiting_for_its_images(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    ack = send(mllp.port, orm(priority="S"))
    assert msa(ack)[0] == "AA"
    assert "MSA|AA|MSG-PLC-1-NW|" in ack  # MSA-2 echoes the order's MSH-10
    (item,) = desk.order_items()
    assert (item["algorithm_id"], item["priority"]) == ("bone-age", "HIGH")  # ORC-7.6 S
    assert item["dataset"]["x-order"]["accession"] == "ACC-1"  # OBR-18
    (event,) = desk.state.events("order-received")
    assert "HL7 ORM^O01 v2.3 from RIS/HOSP: order PLC-1 (accession ACC-1)" in event["detail"]
    desk.tick()  # nothing held, no Q/R peer: it waits, and says why once
    (waiting,) = desk.state.events("order-waiting")
    assert "no [[query_retrieve]] peer" in waiting["detail"]
    every = " ".join(e["detail"] for e in desk.state.events())
    assert "PHANTOM" not in every and "PH-ORD-1" not in every  # no patient in the trail


def test_an_omi_reads_tq1_priority_and_the_ipc_segment_and_its_ack_is_strict_v251(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    ack = send(mllp.port, omi(priority="S"))
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.msa.msa_1.to_er7() == "AA"
    (item,) = desk.order_items()
    assert item["priority"] == "HIGH"  # TQ1-9 S (stat)
    assert item["study_instance_uid"] == STUDY_UID  # IPC-3
    assert item["dataset"]["x-order"]["accession"] == "ACC-2"  # IPC-1


@pytest.mark.parametrize(
    ("message", "code", "error", "reason"),
    [
        (orm(code="CTHEAD"), "AE", "103", "order code CTHEAD is not mapped to an algorithm"),
        (orm(accession="", order=""), "AE", "101", "the order names no study"),
        (orm("CA", order="NEVER"), "AE", "204", "no open order NEVER to cancel"),
        (orm("ZZ"), "AE", "103", "order control (ORC-1) 'ZZ' is not acted on"),
        (orm().replace("ORM^O01", "ADT^A01"), "AR", "200", "ADT\\S\\A01 is not an order"),
        (orm().replace("ORM^O01", "ORM^O02"), "AR", "201", "is not taken"),
        (orm(version="2.2"), "AR", "203", "v2.2 is not taken"),
        (orm().replace("ZDS|", "QQQ|") + "QQQ|1\r", "AE", "102", "not valid HL7 v2"),
        ("this is not HL7", "AR", "100", "does not start with an MSH"),
    ],
)
def test_what_cannot_be_taken_is_answered_with_the_reason(
    desk: OrderDesk, mllp: MllpListener, message: str, code: str, error: str, reason: str
) -> None:
    ack = send(mllp.port, message)
    assert msa(ack)[0] == code
    (err,) = errors(ack)
    assert error in "|".join(err)
    assert reason in ack
    assert not desk.order_items()
    (refused,) = desk.state.events("order-refused")  # in the trail too, with the reason
    assert reason.replace("\\S\\", "^") in refused["detail"]


def test_a_v251_refusal_carries_err_3_err_4_and_the_user_message(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    ack = send(mllp.port, omi().replace("XRHANDBA", "MRBRAIN"))
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.msa.msa_1.to_er7() == "AE"
    (err,) = errors(ack)
    assert err[2] == "OBR^1^4"  # ERR-2 where
    assert err[3] == "103^Table value not found^HL70357"  # ERR-3
    assert err[4] == "E"  # ERR-4 severity
    assert "add it to [orders] codes in edge.toml" in err[8]  # ERR-8 user message
    (refused,) = desk.state.events("order-refused")
    assert "MRBRAIN" in refused["detail"]


def test_several_messages_on_one_connection_each_get_their_ack(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    with socket.create_connection(("127.0.0.1", mllp.port), timeout=10) as sock:
        for order in ("PLC-A", "PLC-B"):
            sock.sendall(b"\x0b" + orm(order=order).encode() + b"\x1c\x0d")
            reply = b""
            while not reply.endswith(b"\x1c\x0d"):
                reply += sock.recv(65536)
            assert f"MSA|AA|MSG-{order}-NW" in reply.decode()
    assert len(desk.order_items()) == 2


def enhanced(message: str, accept: str, application: str) -> str:
    """``message`` with MSH-15 (accept ack type) and MSH-16 (application ack type) set."""
    first, rest = message.split("\r", 1)
    fields = first.split("|")
    fields += [""] * (16 - len(fields))
    fields[14:16] = [accept, application]
    return "|".join(fields) + "\r" + rest


def exchange(port: int, messages: list[str], replies: int) -> list[str]:
    """Each message framed by MLLP on one connection, then ``replies`` framed answers read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for message in messages:
            sock.sendall(b"\x0b" + message.encode() + b"\x1c\x0d")
        data = b""
        while data.count(b"\x1c\x0d") < replies:
            chunk = sock.recv(65536)
            assert chunk, "the edge closed the connection before every answer came"
            data += chunk
    return [frame.lstrip(b"\x0b").decode() for frame in data.split(b"\x1c\x0d")[:replies]]


def strict(message: str) -> Any:
    """``message`` parsed with hl7apy's strict validation, its groups found, and validated."""
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    parsed.validate()
    return parsed


def segment(message: str, name: str) -> list[str]:
    return next(s for s in message.split("\r") if s.startswith(name)).split("|")


def test_an_omi_asking_for_both_acks_gets_the_accept_ack_then_ori_o24(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    accept, response = exchange(mllp.port, [enhanced(omi(), "AL", "AL")], replies=2)
    commit = strict(accept)
    assert commit.msh.msh_9.to_er7() == "ACK^O23^ACK"
    assert msa(accept)[0] == "CA"  # commit accept (table 0008)
    ori = strict(response)  # ORI_O24 v2.5.1, its groups found: the chapter 4 structure
    assert ori.msh.msh_9.to_er7() == "ORI^O24^ORI_O24"
    assert (ori.msh.msh_15.to_er7(), ori.msh.msh_16.to_er7()) == ("NE", "NE")  # no ack back
    assert ori.msa.msa_1.to_er7() == "AA" and ori.msa.msa_2.to_er7() == "MSG-PLC-2"
    order = ori.ori_o24_response.ori_o24_order
    assert order.orc.orc_1.to_er7() == "OK" and order.orc.orc_2.to_er7() == "PLC-2"
    assert order.ipc.ipc_3.to_er7() == STUDY_UID  # the IPC as the RIS sent it
    assert order.obr.obr_4.to_er7() == "XRHANDBA^Hand bone age^L"
    (item,) = desk.order_items()
    assert item["study_instance_uid"] == STUDY_UID


def test_on_error_only_a_good_order_gets_no_answer_and_a_refused_one_its_ori(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    good = enhanced(omi(order="PLC-G"), "NE", "ER")
    cancel = enhanced(omi(order="NEVER").replace("ORC|NW|", "ORC|CA|"), "NE", "ER")
    (response,) = exchange(mllp.port, [good, cancel], replies=1)  # the first is for the cancel
    ori = strict(response)
    assert ori.msa.msa_1.to_er7() == "AE" and ori.msa.msa_2.to_er7() == "MSG-NEVER"
    assert segment(response, "ERR")[3] == "204^Unknown key identifier^HL70357"
    assert ori.ori_o24_response.ori_o24_order.orc.orc_1.to_er7() == "UC"  # unable to cancel
    assert [i["dataset"]["x-order"]["order_number"] for i in desk.order_items()] == ["PLC-G"]


def test_an_orm_asking_for_the_application_ack_gets_orr_o02(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    message = enhanced(orm(version="2.5", order="PLC-R", study_uid=STUDY_UID), "AL", "AL")
    accept, response = exchange(mllp.port, [message], replies=2)
    assert msa(strict(accept).to_er7())[0] == "CA"
    # hl7apy models ORR_O02's order detail choice (OBR | RQD | RQ1 | RXO | ODS | ODT) as a
    # group needing all six, so the message is parsed strictly and each segment validated
    orr = parse_message(response, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert orr.msh.msh_9.to_er7() == "ORR^O02^ORR_O02"
    order = orr.orr_o02_response.orr_o02_order
    for each in (orr.msh, orr.msa, order.orc, order.orr_o02_choice.obr):
        each.validate()
    assert orr.msa.msa_1.to_er7() == "AA"
    assert order.orc.orc_1.to_er7() == "OK" and order.orc.orc_2.to_er7() == "PLC-R"


def test_a_message_refused_whole_in_enhanced_mode_is_a_commit_reject(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    refused = enhanced(omi().replace("|2.5.1", "|2.3"), "AL", "AL")  # no OMI in v2.3
    taken = enhanced(omi(order="PLC-N"), "NE", "AL")  # only the application ack
    reject, response = exchange(mllp.port, [refused, taken], replies=2)
    assert msa(reject)[0] == "CR" and "v2.3 is not taken" in reject  # and no ORI for it
    assert strict(response).msa.msa_2.to_er7() == "MSG-PLC-N"
    assert msa(response)[0] == "AA"


def test_an_ack_from_the_ris_is_not_answered(desk: OrderDesk, mllp: MllpListener) -> None:
    ack = "MSH|^~\\&|RIS|HOSP|AIFI|EDGE|20260115093000||ACK^O24^ACK|RIS-1|P|2.5.1\rMSA|CA|X\r"
    (reply,) = exchange(mllp.port, [ack, omi()], replies=1)
    assert "MSA|AA|MSG-PLC-2|" in reply  # the first answer is the order's
    assert not desk.state.events("order-refused")


def test_the_same_order_sent_twice_is_one_workitem(desk: OrderDesk, mllp: MllpListener) -> None:
    send(mllp.port, orm())
    ack = send(mllp.port, orm())  # the RIS resends when its ACK got lost
    assert msa(ack) == ("AA", "order PLC-1 was received already")
    assert len(desk.order_items()) == 1


def test_a_cancel_ends_the_waiting_order_and_the_ups_view_says_canceled(
    desk: OrderDesk, mllp: MllpListener
) -> None:
    send(mllp.port, orm())
    ack = send(mllp.port, orm("CA"))
    assert msa(ack) == ("AA", "order PLC-1 canceled")
    (item,) = desk.order_items()
    assert item["state"] == "CANCELED"
    assert item["cancel_reason"] == "canceled by the order placer (HL7 ORM^O01 v2.3 from RIS/HOSP)"
    assert desk.tick() == 0  # a canceled order is not looked for any more
    assert not desk.state.events("order-waiting")


def test_a_changed_order_takes_its_new_priority_and_a_new_code_replaces_it(
    tmp_path: Path,
) -> None:
    codes = {"XRHANDBA": "bone-age", "XRSKEL": "fracture-detection"}
    settings = settings_for(tmp_path, codes=codes)
    state = EdgeState(settings.data_dir / "edge.db")
    desk = OrderDesk(settings, state)
    listener = MllpListener(desk, "127.0.0.1", 0, max_bytes=1 << 20)
    listener.start()
    try:
        assert msa(send(listener.port, orm()))[0] == "AA"
        assert msa(send(listener.port, orm("XO", priority="S"))) == ("AA", "order PLC-1 changed")
        (item,) = desk.order_items()
        assert item["priority"] == "HIGH"
        assert msa(send(listener.port, orm("XO", code="XRSKEL")))[0] == "AA"
    finally:
        listener.stop()
    old, new = desk.order_items()
    assert (old["state"], old["algorithm_id"]) == ("CANCELED", "bone-age")
    assert old["cancel_reason"].startswith("replaced by a changed order")
    assert (new["state"], new["algorithm_id"]) == (None, "fracture-detection")
    state.close()


def test_orders_that_waited_when_the_edge_stopped_wait_again_after_it_starts(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    state = EdgeState(settings.data_dir / "edge.db")
    listener = MllpListener(OrderDesk(settings, state), "127.0.0.1", 0, max_bytes=1 << 20)
    listener.start()
    try:
        assert msa(send(listener.port, orm()))[0] == "AA"
    finally:
        listener.stop()
    state.close()
    state = EdgeState(settings.data_dir / "edge.db")  # the edge started again
    OrderDesk(settings, state).tick()
    (waiting,) = state.events("order-waiting")
    assert "order PLC-1" in waiting["detail"]
    state.close()


def add_hand_study(state: EdgeState, folder: Path, accession: str) -> str:
    context = StudyContext(
        patient_name="PHANTOM^HAND",
        patient_id="PH-ORD-3",
        patient_sex="F",
        age_months=121,
        study_date=dt.date(2026, 1, 15),
        accession_number=accession,
        study_description="XR HAND BONE AGE",
    )
    (ds,) = bone_age_study(age_months=121, sex="F", seed=11, study=context)
    (path,) = write_study([ds], folder)
    row = InstanceRow(
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPClassUID),
        str(ds.file_meta.TransferSyntaxUID),
        path,
        path.stat().st_size,
    )
    state.add_instance(row, "PACS", {"Modality": "DX", "BodyPartExamined": "HAND"})
    return str(ds.StudyInstanceUID)


def test_an_order_for_a_study_the_edge_holds_becomes_a_task_with_its_priority(
    tmp_path: Path, desk: OrderDesk, mllp: MllpListener
) -> None:
    study_uid = add_hand_study(desk.state, tmp_path / "received", "ACC-HELD")
    assert msa(send(mllp.port, orm(accession="ACC-HELD", priority="S")))[0] == "AA"
    assert desk.tick() == 1
    (item,) = desk.order_items()
    assert item["study_instance_uid"] == study_uid
    (task_id,) = Assembler(desk.state, [], quiet_period_s=0).tick()  # no rule: the order asked
    task = desk.state.task(task_id)
    assert (task.algorithm_id, task.rule) == ("bone-age", "request by order PLC-1")
    assert desk.state.open_tasks_by_priority()["HIGH"] == 1  # ORC-7.6 S: stat
    assert msa(send(mllp.port, orm("CA", accession="ACC-HELD")))[0] == "AA"
    assert desk.state.task(task_id).state == "CANCELED"


def test_an_order_whose_images_never_come_ends_canceled_with_the_reason(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, wait_for_images_s=0.3)
    state = EdgeState(settings.data_dir / "edge.db")
    desk = OrderDesk(settings, state)
    desk.start()
    try:
        listener = MllpListener(desk, "127.0.0.1", 0, max_bytes=1 << 20)
        listener.start()
        try:
            assert msa(send(listener.port, orm()))[0] == "AA"
            deadline = time.monotonic() + 10
            while not state.events("order-expired") and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            listener.stop()
    finally:
        desk.stop()
    (item,) = desk.order_items()
    assert item["state"] == "CANCELED"
    assert item["cancel_reason"].startswith("the images did not arrive within 0.3 s of the order")
    state.close()


def test_aifi_edge_orders_lists_each_order_and_where_it_stands(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        'data_dir = "edge-data"\n[orders]\nwait_for_images_s = 0.01\n'
        '[orders.codes]\nXRHANDBA = "bone-age"\n',
        encoding="utf-8",
    )
    settings = load_edge_settings(config)
    state = EdgeState(settings.data_dir / "edge.db")
    desk = OrderDesk(settings, state)
    listener = MllpListener(desk, "127.0.0.1", 0, max_bytes=1 << 20)
    listener.start()
    try:
        send(listener.port, orm(order="PLC-OLD", accession="ACC-OLD"))
        time.sleep(0.05)
        desk.tick()  # past its wait: expired
        send(listener.port, orm(order="PLC-NEW", accession="ACC-NEW", priority="S"))
    finally:
        listener.stop()
    state.close()
    result = CliRunner().invoke(cli, ["edge", "orders", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    new, old = json.loads(result.output)
    assert (new["order_number"], new["status"], new["priority"]) == ("PLC-NEW", "waiting", "HIGH")
    assert (old["order_number"], old["accession"], old["status"]) == (
        "PLC-OLD",
        "ACC-OLD",
        "expired",
    )
    assert old["detail"].startswith("the images did not arrive within 0.01 s")
    table = CliRunner().invoke(cli, ["edge", "orders", "--config", str(config)])
    assert table.exit_code == 0 and "PLC-NEW" in table.output


# -- FHIR ServiceRequest ---------------------------------------------------------
def service_request(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "priority": "stat",
        "subject": {"reference": "Patient/PH-ORD-4"},
        "code": {"coding": [{"system": "urn:oid:1.2.3.4.5", "code": "XRHANDBA"}]},
        "identifier": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}
                    ]
                },
                "value": value,
            }
            for code, value in (("ACSN", "ACC-FHIR"), ("PLAC", "PLC-FHIR"))
        ],
    }
    resource.update(changes)
    return resource


@pytest.fixture
def fhir_url(desk: OrderDesk) -> Iterator[str]:
    """The FHIR order route on a real HTTP server on loopback (the edge's web server's kind)."""
    app = FastAPI()
    app.include_router(create_orders_router(desk, TOKEN))
    server = StatusServer(app, "127.0.0.1", 0)
    server.start()
    yield server.url.rstrip("/")
    server.stop()


@pytest.fixture
def fhir(fhir_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fhir_url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def outcome(response: Any) -> str:
    parsed = OperationOutcome.model_validate(response.json())
    return str(parsed.issue[0].diagnostics)


def test_a_service_request_is_created_with_a_location_and_its_priority(
    desk: OrderDesk, fhir: httpx.Client
) -> None:
    response = fhir.post("/fhir/ServiceRequest", json=service_request())
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    (item,) = desk.order_items()
    assert response.headers["location"].endswith(f"/fhir/ServiceRequest/{item['uid']}")
    assert (item["algorithm_id"], item["priority"]) == ("bone-age", "HIGH")  # stat
    assert item["dataset"]["x-order"]["accession"] == "ACC-FHIR"
    read = fhir.get(response.headers["location"])
    assert (read.json()["status"], read.json()["id"]) == ("active", item["uid"])
    revoked = fhir.post("/fhir/ServiceRequest", json=service_request(status="revoked"))
    assert revoked.status_code == 200, revoked.text
    assert fhir.get(response.headers["location"]).json()["status"] == "revoked"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (service_request(subject=None), 400, "subject"),
        (service_request(status="draft"), 422, "status 'draft'"),
        (service_request(intent="proposal"), 422, "intent 'proposal'"),
        (
            service_request(code={"coding": [{"code": "MRBRAIN"}]}),
            422,
            "order code MRBRAIN is not mapped",
        ),
        (service_request(identifier=[]), 422, "the order names no study"),
        (service_request(status="revoked", identifier=[]), 404, "no open order"),
        ({"resourceType": "Patient"}, 400, "one FHIR ServiceRequest"),
    ],
)
def test_a_service_request_not_taken_is_an_operation_outcome(
    desk: OrderDesk, fhir: httpx.Client, body: dict[str, Any], status: int, reason: str
) -> None:
    body = {k: v for k, v in body.items() if v is not None}
    response = fhir.post("/fhir/ServiceRequest", json=body)
    assert response.status_code == status, response.text
    assert reason in outcome(response)
    assert not desk.order_items()


def test_fhir_orders_need_the_admin_password(desk: OrderDesk, fhir_url: str) -> None:
    response = httpx.post(f"{fhir_url}/fhir/ServiceRequest", json=service_request())
    assert response.status_code == 401
    assert "Authorization: Bearer" in outcome(response)


# -- configuration -----------------------------------------------------------------
def test_the_orders_section_is_read_from_edge_toml_and_typos_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        '[orders]\nport = 2575\nwait_for_images_s = 600\n[orders.codes]\nXRHANDBA = "bone-age"\n',
        encoding="utf-8",
    )
    orders = load_edge_settings(config).orders
    assert orders is not None
    assert (orders.host, orders.port, orders.codes) == ("127.0.0.1", 2575, {"XRHANDBA": "bone-age"})
    config.write_text('[orders]\nprot = 2575\n[orders.codes]\nX = "bone-age"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="did you mean 'port'"):
        load_edge_settings(config)
    config.write_text('data_dir = "edge-data"\n', encoding="utf-8")
    assert load_edge_settings(config).orders is None  # no [orders]: no listener, no route
