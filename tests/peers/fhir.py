"""A FHIR R4 endpoint on loopback that keeps what it receives, and a check of what it got.

The Bundle is validated with ``fhir.resources`` (its R4B models: for
DiagnosticReport and Observation the R4 definitions, R4B being R4's
technical correction).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

__all__ = ["FhirServer", "check_report_bundle"]


class FhirServer:
    """A FHIR endpoint on loopback that keeps each POSTed Bundle and answers like a server."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, Any]] = []
        self.status = 200
        received = self.bundles
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"] == "application/fhir+json"
                received.append(json.loads(body))
                answer = json.dumps(
                    {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
                ).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FhirServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def check_report_bundle(
    bundle: dict[str, Any], original: Any, finding_code: str = "59282003"
) -> DiagnosticReport:
    """Validate the Bundle against the FHIR resource definitions; return its report."""
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "transaction"
    resources = [entry.resource for entry in parsed.entry]
    (report,) = [r for r in resources if isinstance(r, DiagnosticReport)]
    observations = [r for r in resources if isinstance(r, Observation)]
    assert report.status == "final"
    assert report.subject.identifier.value == original.PatientID
    assert report.category[0].coding[0].code == "RAD"
    assert {i.value for i in report.identifier} >= {original.AccessionNumber}
    assert report.conclusionCode[0].coding[0].code == finding_code
    assert len(report.result) == len(observations) >= 1
    critical = [o for o in observations if o.interpretation]
    assert critical[0].interpretation[0].coding[0].code == "AA"
    assert critical[0].valueCodeableConcept.coding[0].system == "http://snomed.info/sct"
    assert critical[0].valueCodeableConcept.coding[0].code == finding_code
    for observation in observations:
        assert observation.subject.identifier.value == original.PatientID
    return report
