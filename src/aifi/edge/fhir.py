"""Urgent findings as FHIR R4: a DiagnosticReport with its Observations.

The alternative to HL7 v2 a hospital can choose (or add): the edge POSTs one
transaction Bundle (FHIR R4 §3.1.0.11 ``transaction``) to the configured
FHIR endpoint, holding

* one Observation for the coded finding, interpretation ``AA`` (critical
  abnormal, v3-ObservationInterpretation) so the receiving system can raise
  it, and one per measurement (valueQuantity in UCUM);
* the DiagnosticReport (category ``RAD``, HL7 table 0074) that references
  them, with the conclusion text and code, the accession number as an
  identifier of type ``ACSN`` (v2-0203), and the aifi task id.

The patient is referenced by identifier (the MRN with the hospital's
system URI), never by a resource the edge would have to create: the FHIR
server's Patient is the hospital's. Like the ORU, the Bundle is sent again
until the server answers 2xx.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from pydicom import Dataset

from aifi.errors import DeliveryError

__all__ = ["FhirPeer", "build_report_bundle", "post_bundle"]

_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "RADLEX": "http://radlex.org",
}
_LOCAL_SYSTEM = "urn:aifi:codes:"


class FhirPeer(BaseModel):
    """The hospital's FHIR R4 server that receives urgent results."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="FHIR base, e.g. https://fhir.hospital.local/fhir")
    token: str | None = Field(default=None, description="bearer token, if the server needs one")
    patient_identifier_system: str = Field(
        default="urn:aifi:patient-id",
        description="system URI of the hospital's patient IDs (MRN)",
    )
    accession_system: str = Field(
        default="urn:aifi:accession", description="system URI of the accession numbers"
    )
    timeout_s: float = Field(default=10.0, gt=0)


def _coding(code: Mapping[str, Any]) -> dict[str, str]:
    scheme = str(code["scheme"])
    return {
        "system": _SYSTEMS.get(scheme, _LOCAL_SYSTEM + scheme),
        "code": str(code["value"]),
        "display": str(code["meaning"]),
    }


def _when(ds: Dataset) -> str | None:
    """Study date and time as a FHIR dateTime, or None when the study has no date."""
    date = str(ds.get("StudyDate", "") or "")
    if len(date) != 8 or not date.isdigit():
        return None
    time = (str(ds.get("StudyTime", "") or "").split(".")[0] + "000000")[:6]
    if not time.isdigit():
        time = "000000"
    return f"{date[:4]}-{date[4:6]}-{date[6:]}T{time[:2]}:{time[2:4]}:{time[4:]}Z"


def build_report_bundle(
    peer: FhirPeer,
    original: Dataset,
    *,
    task_id: str,
    algorithm_id: str,
    algorithm_version: str | None,
    findings: Mapping[str, Any],
    observed_at: datetime | None = None,
) -> dict[str, Any]:
    """The transaction Bundle for one urgent result (plain JSON, FHIR R4)."""
    issued = (observed_at or datetime.now(UTC)).astimezone(UTC).isoformat()
    subject: dict[str, Any] = {
        "identifier": {
            "system": peer.patient_identifier_system,
            "value": str(original.get("PatientID", "") or "unknown"),
        }
    }
    if original.get("PatientName"):
        subject["display"] = str(original.PatientName).replace("^", " ").strip()
    effective = _when(original)
    device = {"display": f"{algorithm_id} {algorithm_version or ''}".strip()}
    entries: list[dict[str, Any]] = []

    def observation(body: dict[str, Any]) -> str:
        full_url = f"urn:uuid:{uuid.uuid4()}"
        resource = {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "imaging",
                        }
                    ]
                }
            ],
            "subject": subject,
            "issued": issued,
            "device": device,
            **({"effectiveDateTime": effective} if effective else {}),
            **body,
        }
        entries.append(
            {
                "fullUrl": full_url,
                "resource": resource,
                "request": {"method": "POST", "url": "Observation"},
            }
        )
        return full_url

    results: list[str] = []
    finding = findings.get("finding")
    if isinstance(finding, Mapping):
        results.append(
            observation(
                {
                    "code": {
                        "coding": [
                            _coding(
                                {
                                    "value": "59776-5",
                                    "scheme": "LN",
                                    "meaning": "Procedure findings",
                                }
                            )
                        ]
                    },
                    "valueCodeableConcept": {"coding": [_coding(finding)]},
                    "interpretation": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "v3-ObservationInterpretation",
                                    "code": "AA",
                                    "display": "Critical abnormal",
                                }
                            ]
                        }
                    ],
                }
            )
        )
    for measurement in findings.get("measurements", []) or []:
        unit = measurement["unit"]
        results.append(
            observation(
                {
                    "code": {"coding": [_coding(measurement["concept"])]},
                    "valueQuantity": {
                        "value": float(measurement["value"]),
                        "unit": str(unit["meaning"]),
                        "system": "http://unitsofmeasure.org",
                        "code": str(unit["value"]),
                    },
                }
            )
        )
    summary = str(findings.get("summary", ""))
    if findings.get("demo_model") and "demo model" not in summary:
        summary += " (demo model - not for clinical use)"
    identifiers: list[dict[str, Any]] = [{"system": "urn:aifi:task", "value": task_id}]
    accession = str(original.get("AccessionNumber", "") or "")
    if accession:
        identifiers.append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "ACSN",
                        }
                    ]
                },
                "system": peer.accession_system,
                "value": accession,
            }
        )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": identifiers,
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
        ],
        "code": {
            "coding": [
                _coding({"value": "18748-4", "scheme": "LN", "meaning": "Diagnostic imaging study"})
            ]
        },
        "subject": subject,
        "issued": issued,
        "performer": [{"display": f"aifi: {device['display']}"}],
        "result": [{"reference": url} for url in results],
        "conclusion": summary,
        **({"effectiveDateTime": effective} if effective else {}),
    }
    if isinstance(finding, Mapping):
        report["conclusionCode"] = [{"coding": [_coding(finding)]}]
    entries.append(
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": report,
            "request": {"method": "POST", "url": "DiagnosticReport"},
        }
    )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def post_bundle(peer: FhirPeer, bundle: Mapping[str, Any]) -> int:
    """POST the transaction Bundle to the FHIR base; return the HTTP status.

    Raises :class:`DeliveryError` when the server is unreachable or answers
    anything but 2xx, with the server's OperationOutcome text where it gave one.
    """
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if peer.token:
        headers["Authorization"] = f"Bearer {peer.token}"
    try:
        response = httpx.post(
            peer.base_url.rstrip("/") + "/",
            json=dict(bundle),
            headers=headers,
            timeout=peer.timeout_s,
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(
            f"FHIR server at {peer.base_url} unreachable ({type(exc).__name__}); the urgent"
            " result will be sent again"
        ) from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(
            f"FHIR server at {peer.base_url} refused the DiagnosticReport"
            f" ({response.status_code}): {response.text[:300]}"
        )
    return response.status_code
