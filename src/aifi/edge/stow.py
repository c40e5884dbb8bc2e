"""STOW-RS into the edge: a DICOMweb-native PACS stores studies as others C-STORE them.

``POST /dicomweb/studies`` (and ``/dicomweb/studies/{study}``) on the edge's
local web server takes ``multipart/related; type="application/dicom"``
(PS3.18 §10.5.1), one Part 10 file per part. Each part is handed, as soon as
its closing boundary arrives, to the same receive path as a C-STORE
(:meth:`aifi.edge.scp.EdgeReceiver.store_encoded`: the same UID checks,
free-space check, durable write and state row), so one instance at a time
is in memory, never the request. The answer is the Store Instances Response
Module (PS3.18 §10.5.3.1) as DICOM JSON: 200 all stored, 202 some, 409 none;
a refused part carries the C-STORE status the listener would have answered
as its Failure Reason (0008,1197) and the Error Comment as Text Value
(0040,A160). Every call needs ``Authorization: Bearer <status.admin_password>``,
as UPS-RS on the same server does.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from io import BytesIO
from typing import Protocol

import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from starlette.concurrency import run_in_threadpool

from aifi.dicom.multipart import DICOM_MEDIA_TYPE, MultipartError, MultipartReader, boundary_of
from aifi.dicom.status import CANNOT_UNDERSTAND, STUDY_MISMATCH, stow_http_status
from aifi.netutil import warning_header

__all__ = ["Receiver", "create_stow_router"]

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_BATCH = 1024 * 1024


class Receiver(Protocol):
    """The edge's receive path (:class:`aifi.edge.scp.EdgeReceiver`)."""

    def store_encoded(
        self, raw: bytes, transfer_syntax: str, sop_class_uid: str, sop_uid: str, source: str
    ) -> int | Dataset: ...


@dataclass
class _Outcome:
    stored: list[Dataset] = field(default_factory=list)
    failed: list[Dataset] = field(default_factory=list)

    def fail(self, reason: int, text: str, sop_class: str = "", sop: str = "") -> None:
        item = Dataset()
        if sop_class:
            item.ReferencedSOPClassUID = sop_class
        if sop:
            item.ReferencedSOPInstanceUID = sop
        item.FailureReason = reason
        item.TextValue = text
        self.failed.append(item)

    def response(self) -> JSONResponse:
        ds = Dataset()
        if self.stored:
            ds.ReferencedSOPSequence = self.stored
        if self.failed:
            ds.FailedSOPSequence = self.failed
        code = stow_http_status(len(self.stored), len(self.failed))
        return JSONResponse(ds.to_json_dict(), status_code=code, media_type=DICOM_JSON)


def _store_part(
    receiver: Receiver, part: bytes, source: str, study: str | None, outcome: _Outcome
) -> None:
    """One Part 10 file through the C-STORE receive path."""
    stream = BytesIO(part)
    try:
        read_preamble(stream, True)  # tolerant: pydicom.dcmwrite of a Dataset writes no preamble
        meta = _read_file_meta_info(stream)
        start = stream.tell()
        header = pydicom.dcmread(BytesIO(part), stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        outcome.fail(CANNOT_UNDERSTAND, f"the part is not a DICOM Part 10 file: {exc}")
        return
    sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
    sop = str(meta.get("MediaStorageSOPInstanceUID", ""))
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if not (sop_class and sop and syntax):
        outcome.fail(
            CANNOT_UNDERSTAND, "the File Meta Information lacks SOP class, instance or syntax"
        )
        return
    if study is not None and str(header.get("StudyInstanceUID", "")) != study:
        outcome.fail(
            STUDY_MISMATCH, "the instance is not of the study in the request URL", sop_class, sop
        )
        return
    status = receiver.store_encoded(part[start:], syntax, sop_class, sop, source)
    if isinstance(status, Dataset):
        outcome.fail(int(status.Status), str(status.get("ErrorComment", "")), sop_class, sop)
        return
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop
    outcome.stored.append(item)


def create_stow_router(receiver: Receiver, token: str | None) -> APIRouter:
    """The STOW-RS routes of the edge's local web server."""
    router = APIRouter(prefix="/dicomweb", tags=["stow-rs"])

    async def store(request: Request, study: str | None) -> JSONResponse:
        if token is None:
            return _refused(403, "STOW-RS is off: set [status] admin_password to serve it")
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _refused(401, "send Authorization: Bearer <the edge's status admin password>")
        try:
            boundary = boundary_of(request.headers.get("content-type"), DICOM_MEDIA_TYPE)
        except MultipartError as exc:
            return _refused(415, f"STOW-RS: {exc}")
        source = f"STOW-RS {request.client.host if request.client else 'unknown'}"
        outcome = _Outcome()
        # Each part is kept in memory only until it is stored (the receive path takes bytes).
        reader: MultipartReader[BytesIO] = MultipartReader(boundary, BytesIO)
        pending = bytearray()
        try:
            async for chunk in request.stream():
                pending += chunk
                if len(pending) < _BATCH and chunk:
                    continue
                for part in reader.feed(bytes(pending)):
                    raw = part.sink.getvalue()
                    await run_in_threadpool(_store_part, receiver, raw, source, study, outcome)
                pending.clear()
            for part in reader.feed(bytes(pending)):
                raw = part.sink.getvalue()
                await run_in_threadpool(_store_part, receiver, raw, source, study, outcome)
            reader.close()
        except MultipartError as exc:
            return _refused(400, str(exc))
        if not outcome.stored and not outcome.failed:
            return _refused(400, "the STOW-RS body has no parts")
        logger.info(
            "STOW-RS from %s: %d stored, %d refused",
            source,
            len(outcome.stored),
            len(outcome.failed),
        )
        return outcome.response()

    @router.post("/studies")
    async def store_instances(request: Request) -> JSONResponse:
        """STOW-RS Store Instances (PS3.18 §10.5)."""
        return await store(request, None)

    @router.post("/studies/{study}")
    async def store_study_instances(study: str, request: Request) -> JSONResponse:
        """STOW-RS Store Instances of one study; others fail with 0xC409."""
        return await store(request, study)

    return router


def _refused(code: int, reason: str) -> JSONResponse:
    return JSONResponse(
        {"detail": reason},
        status_code=code,
        headers={"Warning": warning_header("aifi-edge", reason)},
    )
