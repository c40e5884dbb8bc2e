"""Urgent findings to the hospital's RIS: HL7 v2.5.1 ORU^R01 over MLLP.

An urgent result (e.g. suspected pulmonary embolism found incidentally) must
reach a person, not only the PACS. After the result objects are stored, the
edge sends one ORU^R01 (HL7 v2.5.1 §7.3.1, unsolicited observation) to the
configured RIS endpoint over MLLP (HL7 Transport Specification: MLLP, release
2). What a RIS needs to file it:

* MSH-18 ``UNICODE UTF-8`` when any text is not ASCII (names in Japanese,
  Greek, ...); the bytes on the wire are then UTF-8 (v2.5.1 §2.15.9.18);
* PID-3 as a CX with the assigning authority and identifier type code (HL7
  table 0203, ``MR`` by default) the hospital configures, falling back to
  the study's Issuer of Patient ID;
* an ORC (order control ``RE``, observations to follow) and the accession
  number where IHE Radiology puts it: the filler order number (ORC-3,
  OBR-3) and Placer Field 1 (OBR-18), IHE RAD TF-2 §4.4 / TF-3 §4.128;
* per OBX the observation time (OBX-14) and the responsible device, the
  algorithm and its version (OBX-18, Equipment Instance Identifier);
* the finding with abnormal flag ``AA`` (critical abnormal, HL7 table 0078)
  so the RIS can raise it.

The message is sent again until the RIS answers with an application accept
(MSA-1 ``AA`` or ``CA``); the caller keeps the attempts.
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

#: LOINC codes of the observations every ORU carries.
FINDINGS_CONCEPT = ("59776-5", "Procedure findings", "LN")
NARRATIVE_CONCEPT = ("18782-3", "Radiology Study observation (narrative)", "LN")
REPORT_SERVICE = ("18748-4", "Diagnostic imaging study", "LN")

# DICOM coding scheme designators → HL7 table 0396 coding systems.
_HL7_SCHEMES = {"SCT": "SCT", "LN": "LN", "UCUM": "UCUM", "DCM": "DCM", "RADLEX": "RADLEX"}


class RisPeer(BaseModel):
    """The RIS (or interface engine) that receives urgent results over MLLP."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(ge=1, le=65535)
    sending_application: str = "AIFI"
    sending_facility: str = "AIFI-EDGE"
    receiving_application: str = "RIS"
    receiving_facility: str = ""
    patient_id_authority: str | None = Field(
        default=None,
        description="PID-3.4 assigning authority, e.g. the hospital's MRN namespace;"
        " default: the study's Issuer of Patient ID",
    )
    patient_id_type: str = Field(default="MR", description="PID-3.5, HL7 table 0203")
    filler_namespace: str = Field(
        default="", description="namespace of the accession number in ORC-3/OBR-3 (EI.2)"
    )
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
    """DICOM PN (family^given^middle^prefix^suffix) → HL7 XPN components, escaped.

    XPN is family^given^middle^suffix^prefix (v2.5.1 §2.A.88); only the
    alphabetic group of a PN is sent, in the text of the message.
    """
    name = ds.get("PatientName")
    if not name:
        return '""'  # PID-5 is required: the HL7 explicit null (v2.5.1 §2.5.3)
    parts = [
        name.family_name,
        name.given_name,
        name.middle_name,
        name.name_suffix,
        name.name_prefix,
    ]
    return "^".join(_esc(p) for p in parts).rstrip("^")


def _cwe(code: Mapping[str, Any]) -> str:
    """A coded value as CE/CWE: identifier^text^coding system (table 0396)."""
    scheme = str(code["scheme"])
    return f"{_esc(code['value'])}^{_esc(code['meaning'])}^{_esc(_HL7_SCHEMES.get(scheme, scheme))}"


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def build_oru(
    peer: RisPeer,
    original: Dataset,
    *,
    task_id: str,
    algorithm_id: str,
    algorithm_version: str | None,
    findings: Mapping[str, Any],
    control_id: str,
    observed_at: datetime | None = None,
    now: datetime | None = None,
) -> str:
    """An ORU^R01 for one urgent result; segments separated by CR (v2.5.1 §2.6).

    ``original`` holds the re-identified patient and study attributes;
    ``observed_at`` is when the algorithm produced the result.
    """
    now = now or datetime.now(UTC)
    stamp = _ts(now)
    observed = _ts(observed_at or now)
    study = f"{original.get('StudyDate', '')}{str(original.get('StudyTime', ''))[:6]}"
    accession = _esc(original.get("AccessionNumber", "") or "")
    filler = f"{accession}^{_esc(peer.filler_namespace)}".rstrip("^") if accession else ""
    authority = "&".join(  # HD: namespace&universal ID&type, each escaped
        _esc(part)
        for part in (
            peer.patient_id_authority or str(original.get("IssuerOfPatientID", "") or "")
        ).split("&")
    )
    device = f"{_esc(algorithm_id)}{' ' + _esc(algorithm_version) if algorithm_version else ''}"
    device_ei = f"{device}^AIFI"
    service = "^".join(_esc(p) for p in REPORT_SERVICE)

    observations: list[tuple[str, str, str, str, str]] = []
    finding = findings.get("finding")
    if isinstance(finding, Mapping):
        observations.append(("CE", "^".join(FINDINGS_CONCEPT), _cwe(finding), "", "AA"))
    for measurement in findings.get("measurements", []) or []:
        unit = measurement["unit"]
        observations.append(
            (
                "NM",
                _cwe(measurement["concept"]),
                f"{float(measurement['value']):g}",
                f"{_esc(unit['value'])}^{_esc(unit['meaning'])}^UCUM",
                "",
            )
        )
    summary = str(findings.get("summary", ""))
    if findings.get("demo_model") and "demo model" not in summary:
        summary += " (demo model - not for clinical use)"
    observations.append(("TX", "^".join(NARRATIVE_CONCEPT), _esc(summary), "", ""))

    body_segments = [
        "|".join(
            [
                "PID",
                "1",
                "",
                f"{_esc(original.get('PatientID', ''))}^^^{authority}^{_esc(peer.patient_id_type)}",
                "",
                _xpn(original),
                "",
                _esc(original.get("PatientBirthDate", "") or ""),
                _esc(original.get("PatientSex", "") or ""),
            ]
        ),
        "|".join(["ORC", "RE", "", filler, "", "CM", "", "", "", stamp]),
        "|".join(
            [
                "OBR",
                "1",
                "",
                filler,
                service,
                "",
                "",
                study,
                *[""] * 10,
                accession,  # OBR-18 Placer Field 1: the accession number (IHE RAD)
                _esc(original.get("RequestedProcedureID", "") or ""),  # OBR-19
                _esc(task_id),  # OBR-20 Filler Field 1: aifi's task id
                "",
                stamp,  # OBR-22 results reported
                "",
                "RAD",  # OBR-24 diagnostic service section (table 0074)
                "F",  # OBR-25 result status
            ]
        ),
    ]
    for index, (value_type, identifier, value, units, flag) in enumerate(observations, 1):
        body_segments.append(
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
                    "",
                    "",
                    observed,  # OBX-14 date/time of the observation
                    "",
                    "",
                    "",
                    device_ei,  # OBX-18 equipment instance identifier: the algorithm
                ]
            )
        )
    text = "\r".join(body_segments)
    charset = "" if text.isascii() else "UNICODE UTF-8"
    msh = [
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
    if charset:
        msh += ["", "", "", "", "", charset]  # MSH-13..17 empty, MSH-18
    return "|".join(msh) + "\r" + text


def message_encoding(message: str) -> str:
    """The Python codec MSH-18 asks for (ASCII when absent, v2.5.1 §2.15.9.18)."""
    msh = message.split("\r", 1)[0].split("|")
    return "utf-8" if len(msh) > 17 and msh[17] == "UNICODE UTF-8" else "ascii"


def send_mllp(peer: RisPeer, message: str) -> str:
    """Send one message framed by MLLP and return the RIS's acknowledgement code.

    Raises :class:`DeliveryError` when the RIS is unreachable, answers no
    ACK, or rejects the message (MSA-1 AE/AR/CE/CR).
    """
    payload = message.encode(message_encoding(message))
    try:
        with socket.create_connection((peer.host, peer.port), timeout=peer.timeout_s) as sock:
            sock.sendall(_START + payload + _END)
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
