"""``/dicomweb``: STOW-RS in, WADO-RS out (PS3.18 §10.5 and §10.4).

The edge stores pseudonymized instances here and retrieves result objects
(and, if it needs to, its own inputs). Only the calling hospital's objects
are visible: anything else is 404, never 403, so a hospital cannot learn
that a UID exists elsewhere.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aifi.errors import DicomInputError
from aifi.hub.auth import CurrentHospital
from aifi.hub.deps import ContextDep, HubContext, SessionDep
from aifi.hub.ingest import store_parts
from aifi.hub.models import Instance, Result
from aifi.hub.storage import ObjectStore, iter_file
from aifi.hub.stow import DICOM_MEDIA_TYPE, receive_parts, stow_boundary

__all__ = ["router"]

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"


@router.post("/studies", status_code=status.HTTP_200_OK)
async def store_instances(
    request: Request, hospital: CurrentHospital, session: SessionDep, context: ContextDep
) -> JSONResponse:
    """STOW-RS Store Instances (PS3.18 §10.5)."""
    return await _store(request, hospital.id, session, context, None)


@router.post("/studies/{study}", status_code=status.HTTP_200_OK)
async def store_study_instances(
    study: str,
    request: Request,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
) -> JSONResponse:
    """STOW-RS Store Instances into one study; instances of other studies fail."""
    return await _store(request, hospital.id, session, context, study)


async def _store(
    request: Request, hospital_id: str, session: Session, context: HubContext, study: str | None
) -> JSONResponse:
    try:
        boundary = stow_boundary(request.headers.get("content-type"))
    except DicomInputError as exc:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, detail=str(exc)) from exc
    limit = context.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"the body is larger than the hub accepts ({limit} bytes); split the study",
        )
    try:
        parts = await receive_parts(request.stream(), boundary, context.store, max_bytes=limit)
    except DicomInputError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    if not parts:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="the STOW-RS body has no parts")
    outcome = await run_in_threadpool(
        store_parts, session, context.store, hospital_id, parts, study_instance_uid=study
    )
    base_url = str(request.base_url).rstrip("/") + router.prefix
    return JSONResponse(
        outcome.to_dicom_json(base_url), status_code=outcome.http_status, media_type=DICOM_JSON
    )


@router.get("/studies/{study}")
def retrieve_study(
    study: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """WADO-RS Retrieve Study: every object of the study this hospital may read."""
    return _retrieve(session, context.store, hospital.id, accept, study)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(
    study: str,
    series: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """WADO-RS Retrieve Series."""
    return _retrieve(session, context.store, hospital.id, accept, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def retrieve_instance(
    study: str,
    series: str,
    sop: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """WADO-RS Retrieve Instance (PS3.18 §10.4.1.1.1)."""
    return _retrieve(session, context.store, hospital.id, accept, study, series, sop)


def _retrieve(
    session: Session,
    store: ObjectStore,
    hospital_id: str,
    accept: str | None,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> StreamingResponse:
    if not _accepts_multipart_dicom(accept):
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            detail='this hub returns multipart/related; type="application/dicom" only',
        )
    keys = _object_keys(session, hospital_id, study, series, sop)
    if not keys:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such DICOM object")
    boundary = secrets.token_hex(16)
    return StreamingResponse(
        _multipart(store, keys, boundary),
        media_type=f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}',
    )


def _accepts_multipart_dicom(accept: str | None) -> bool:
    """PS3.18 §8.7.3.5: no Accept, ``*/*`` or multipart/related of application/dicom."""
    if not accept:
        return True
    for entry in accept.split(","):
        media = entry.strip().lower()
        if media.startswith(("*/*", "multipart/*")):
            return True
        if media.startswith("multipart/related") and (
            "type" not in media or DICOM_MEDIA_TYPE in media
        ):
            return True
    return False


def _object_keys(
    session: Session, hospital_id: str, study: str, series: str | None, sop: str | None
) -> list[str]:
    """Storage keys of this hospital's matching results and inputs, results first."""
    keys: list[str] = []
    for model in (Result, Instance):
        query = select(model.object_key).where(
            model.hospital_id == hospital_id,
            model.study_instance_uid == study,
            model.purged_at.is_(None),
        )
        if series is not None:
            query = query.where(model.series_instance_uid == series)
        if sop is not None:
            query = query.where(model.sop_instance_uid == sop)
        keys.extend(session.scalars(query.order_by(model.id)))
    return keys


def _multipart(store: ObjectStore, keys: list[str], boundary: str) -> Iterator[bytes]:
    """The response body, one part per object, read from disk chunk by chunk."""
    delimiter = f"--{boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\n\r\n".encode("ascii")
    for key in keys:
        yield delimiter
        yield from iter_file(store.open(key))
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")
