"""A vendor's inference service on loopback, following the aifi remote algorithm contract.

The contract is ``docs/remote-algorithm.openapi.json``. The service is a
FastAPI app (:func:`vendor_app`) served by a real uvicorn on a free
127.0.0.1 port (:class:`Served`); it reads the DICOM instances it is sent
with pydicom, answers "busy" as configured in :class:`Vendor`, and reports
:func:`expected_findings` on the first instance it received. Used by
``tests/algorithms/test_remote.py`` and by the hub's configured-algorithm
tests; import as ``from peers.vendor import ...``.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field

import pydicom
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydicom.uid import generate_uid

from aifi.algorithms.base import Box, Code, Findings, ImageFinding, Measurement
from aifi.algorithms.findings_json import findings_to_json
from aifi.netutil import free_port

__all__ = ["NODULE", "TOKEN", "Served", "Vendor", "expected_findings", "parts", "vendor_app"]

TOKEN = "vendor-token-for-tests"
NODULE = Code("427359005", "SCT", "Solitary nodule of lung")


@dataclass
class Vendor:
    """What the vendor service does and what it saw."""

    busy_submits: int = 0
    busy_polls: int = 0
    outcome: str = "completed"
    reason: str = ""
    polls_until_done: int = 2
    stranger_finding: bool = False
    received: list[pydicom.Dataset] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    idempotency_keys: list[str] = field(default_factory=list)
    busy_answers: int = 0
    polls: int = 0
    deleted: list[str] = field(default_factory=list)


def vendor_app(vendor: Vendor) -> FastAPI:
    """A vendor's inference service following the aifi remote algorithm contract."""
    app = FastAPI()
    inferences: dict[str, list[str]] = {}

    def authorised(request: Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    def unauthorised() -> JSONResponse:
        return JSONResponse({"reason": "unknown token"}, status_code=401)

    def busy_answer(which: str, retry_after: str) -> JSONResponse | None:
        if which == "submit" and vendor.busy_submits > 0:
            vendor.busy_submits -= 1
            status = 429
        elif which == "poll" and vendor.busy_polls > 0:
            vendor.busy_polls -= 1
            status = 503
        else:
            return None
        vendor.busy_answers += 1
        return JSONResponse(
            {"reason": "busy"}, status_code=status, headers={"Retry-After": retry_after}
        )

    @app.post("/v1/inferences")
    async def submit(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        if (answer := busy_answer("submit", "1")) is not None:
            return answer
        content_type = request.headers["Content-Type"]
        vendor.content_types.append(content_type)
        vendor.idempotency_keys.append(request.headers.get("Idempotency-Key", ""))
        datasets = [
            pydicom.dcmread(io.BytesIO(part)) for part in parts(await request.body(), content_type)
        ]
        vendor.received.extend(datasets)
        inference = f"inf-{len(inferences) + 1}"
        inferences[inference] = [str(ds.SOPInstanceUID) for ds in datasets]
        return JSONResponse({"id": inference, "state": "queued"}, status_code=202)

    @app.get("/v1/inferences/{inference}")
    def state(inference: str, request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        if inference not in inferences:
            return JSONResponse({"reason": "no such inference"}, status_code=404)
        http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 1))
        if (answer := busy_answer("poll", http_date)) is not None:
            return answer
        vendor.polls += 1
        if vendor.polls < vendor.polls_until_done:
            current = "queued" if vendor.polls == 1 else "running"
            return JSONResponse({"id": inference, "state": current})
        if vendor.outcome == "failed":
            return JSONResponse({"id": inference, "state": "failed", "reason": vendor.reason})
        return JSONResponse({"id": inference, "state": vendor.outcome})

    @app.delete("/v1/inferences/{inference}")
    def cancel(inference: str) -> Response:
        vendor.deleted.append(inference)
        return Response(status_code=204)

    @app.get("/v1/inferences/{inference}/findings")
    def findings(inference: str, request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        uids = inferences[inference]
        target = generate_uid() if vendor.stranger_finding else uids[0]
        return JSONResponse(findings_to_json(expected_findings(target)))

    return app


def expected_findings(sop_instance_uid: str) -> Findings:
    return Findings(
        summary="1 lung nodule suspected",
        finding=NODULE,
        measurements=(
            Measurement(Code("122157", "DCM", "Probability"), 0.82, Code("1", "UCUM", "no units")),
        ),
        images=(
            ImageFinding(
                sop_instance_uid,
                texts=((Code("121071", "DCM", "Finding"), "nodule"),),
                boxes=(
                    Box(10.0, 20.0, 40.0, 50.0, "nodule", 0.82),
                    Box(30.0, 30.0, 30.0, 30.0, "centre", 0.5),
                ),
            ),
        ),
        demo_model=True,
        details={"vendor_model": "nodulenet-7"},
    )


def parts(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart/related body (read independently of aifi)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    found = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        headers, _, payload = chunk.partition(b"\r\n\r\n")
        assert b"application/dicom" in headers
        found.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return found


class Served:
    """``app`` under uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "vendor service did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
