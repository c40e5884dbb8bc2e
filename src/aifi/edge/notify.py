"""Urgent findings to the hospital's RIS: HL7 v2.5.1 ORU^R01 over MLLP.

An urgent result (e.g. suspected pulmonary embolism found incidentally) must
reach a person, not only the PACS. After the result objects are stored, the
edge sends one ORU^R01 (HL7 v2.5.1 §7.3.1, unsolicited observation) to the
configured RIS endpoint over MLLP (HL7 Transport Specification: MLLP, release
2), with the re-identified patient (PID), the order by its accession number
(OBR-2/OBR-3), and one OBX per finding. The finding carries abnormal flag
``AA`` (critical abnormal, HL7 table 0078) so the RIS can raise it. The
message is sent again until the RIS answers with an application accept
(MSA-1 ``AA`` or ``CA``).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import hl7
from pydantic import BaseModel, ConfigDict, Field
from pydicom import Dataset

from aifi.errors import DeliveryError

__all__ = ["RisPeer", "build_oru", "send_mllp"]

_START, _END = b"\x0b", b"\x1c\x0d"


class RisPeer(BaseModel):
    """The RIS (or interface engine) that receives urgent results over MLLP."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(ge=1, le=65535)
    sending_application: str = "AIFI"
    sending_facility: str = "AIFI-EDGE"
    receiving_application: str = "RIS"
    receiving_facility: str = ""
    timeout_s: float = Field(default=10.0, gt=0)


def _esc(value: object) -> str:
    """HL7 escape sequences for the delimiters (v2.5.1 §2.7)."""
    text = str(value)
    for raw, escaped in (
        ("\\", "\\E\\"),
        ("|", "\\F\\"),
        ("^", "\\S\\"),
        ("&", "\\T\\"),
        ("~", "\\R\\"),
    ):
        text = text.replace(raw, escaped)
    return text.replace("\r", " ").replace("\n", " ")


def _xpn(ds: Dataset) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) → HL7 XPN components, escaped."""
    name = ds.get("PatientName")
    if name is None:
        return ""
    parts = [
        name.family_name,
        name.given_name,
        name.middle_name,
        name.name_suffix,
        name.name_prefix,
    ]
    return "^".join(_esc(p) for p in parts).rstrip("^")


def build_oru(
    peer: RisPeer,
    original: Dataset,
    *,
    task_id: str,
    algorithm_id: str,
    algorithm_version: str | None,
    findings: Mapping[str, Any],
    control_id: str,
    now: datetime | None = None,
) -> str:
    """An ORU^R01 for one urgent result; segments separated by CR (v2.5.1 §2.6)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    study = f"{original.get('StudyDate', '')}{str(original.get('StudyTime', ''))[:6]}"
    accession = _esc(original.get("AccessionNumber", ""))
    version = f" {algorithm_version}" if algorithm_version else ""
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                _esc(peer.sending_application),
                _esc(peer.sending_facility),
                _esc(peer.receiving_application),
                _esc(peer.receiving_facility),
                stamp,
                "",
                "ORU^R01^ORU_R01",
                _esc(control_id),
                "P",
                "2.5.1",
            ]
        ),
        "|".join(
            [
                "PID",
                "1",
                "",
                f"{_esc(original.get('PatientID', ''))}^^^"
                f"{_esc(original.get('IssuerOfPatientID', ''))}",
                "",
                _xpn(original),
                "",
                _esc(original.get("PatientBirthDate", "")),
                _esc(original.get("PatientSex", "")),
            ]
        ),
        "|".join(
            [
                "OBR",
                "1",
                accession,
                _esc(task_id),
                f"{_esc(algorithm_id)}^{_esc(algorithm_id + version)}^L",
                "",
                "",
                study,
                *[""] * 14,
                stamp,
                "",
                "",
                "F",
            ]
        ),
    ]
    observations: list[tuple[str, str, str, str, str]] = []
    finding = findings.get("finding")
    if isinstance(finding, Mapping):
        coded = f"{_esc(finding['value'])}^{_esc(finding['meaning'])}^{_esc(finding['scheme'])}"
        observations.append(("CWE", coded, "Y^Yes^HL70136", "", "AA"))
    for measurement in findings.get("measurements", []) or []:
        concept = measurement["concept"]
        unit = measurement["unit"]
        observations.append(
            (
                "NM",
                f"{_esc(concept['value'])}^{_esc(concept['meaning'])}^{_esc(concept['scheme'])}",
                f"{float(measurement['value']):g}",
                f"{_esc(unit['value'])}^{_esc(unit['meaning'])}^UCUM",
                "",
            )
        )
    summary = str(findings.get("summary", ""))
    observations.append(("TX", "59776-5^Procedure findings^LN", _esc(summary), "", ""))
    for index, (value_type, identifier, value, units, flag) in enumerate(observations, 1):
        segments.append(
            "|".join(
                [
                    "OBX",
                    str(index),
                    value_type,
                    identifier,
                    "",
                    value,
                    units,
                    "",
                    flag,
                    "",
                    "",
                    "F",
                ]
            )
        )
    return "\r".join(segments)


def send_mllp(peer: RisPeer, message: str) -> str:
    """Send one message framed by MLLP and return the RIS's acknowledgement code.

    Raises :class:`DeliveryError` when the RIS is unreachable, answers no
    ACK, or rejects the message (MSA-1 AE/AR/CE/CR).
    """
    try:
        with socket.create_connection((peer.host, peer.port), timeout=peer.timeout_s) as sock:
            sock.sendall(_START + message.encode("utf-8") + _END)
            reply = b""
            while not reply.endswith(_END):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        raise DeliveryError(
            f"RIS at {peer.host}:{peer.port} unreachable ({exc}); the urgent result will be"
            " sent again"
        ) from exc
    text = reply.removeprefix(_START).removesuffix(_END).decode("utf-8", "replace")
    try:
        ack = hl7.parse(text)
        code = str(ack.segment("MSA")[1])
    except (hl7.ParseException, KeyError, IndexError) as exc:
        raise DeliveryError(f"RIS at {peer.host}:{peer.port} answered no valid ACK") from exc
    if code not in ("AA", "CA"):
        raise DeliveryError(f"RIS at {peer.host}:{peer.port} rejected the message ({code})")
    return code
