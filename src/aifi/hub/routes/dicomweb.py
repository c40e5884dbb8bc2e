"""``/dicomweb``: STOW-RS in, WADO-RS and QIDO-RS out (PS3.18 §10.5, §10.4, §10.6).

The edge stores pseudonymized instances here and retrieves result objects
(and, if it needs to, its own inputs). Only the calling hospital's objects
are visible: anything else is 404, never 403, so a hospital cannot learn
that a UID exists elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aifi.dicom.multipart import content_type, new_boundary, write_parts
from aifi.errors import DicomInputError
from aifi.hub.auth import CurrentHospital
from aifi.hub.db import retrying
from aifi.hub.deps import ContextDep, HubContext, SessionDep
from aifi.hub.ingest import StoreOutcome, judge_parts, store_parts
from aifi.hub.models import Instance, Result
from aifi.hub.qido import Level, Query, QueryError, search
from aifi.hub.rendered import (
    THUMBNAIL_VIEWPORT,
    RenderError,
    RenderParams,
    choose_media_type,
    render,
)
from aifi.hub.storage import ObjectStore
from aifi.hub.stow import receive_parts, stow_boundary
from aifi.hub.wado import (
    FrameError,
    NotAcceptable,
    bulkdata,
    decoded_frame,
    frames_body,
    metadata,
    multipart_body,
    negotiate,
    parse_frame_list,
    plan,
    plan_frames,
)
from aifi.netutil import warning_header

__all__ = ["router"]

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
_OCTETS = "application/octet-stream"


@router.post("/studies", status_code=status.HTTP_200_OK)
async def store_instances(
    request: Request, hospital: CurrentHospital, context: ContextDep
) -> JSONResponse:
    """STOW-RS Store Instances (PS3.18 §10.5)."""
    return await _store(request, hospital.id, context, None)


@router.post("/studies/{study}", status_code=status.HTTP_200_OK)
async def store_study_instances(
    study: str,
    request: Request,
    hospital: CurrentHospital,
    context: ContextDep,
) -> JSONResponse:
    """STOW-RS Store Instances into one study; instances of other studies fail."""
    return await _store(request, hospital.id, context, study)


async def _store(
    request: Request, hospital_id: str, context: HubContext, study: str | None
) -> JSONResponse:
    """Receive the parts, judge each once, then store them in a transaction run again after
    a dropped connection or serialization failure (:func:`aifi.hub.db.retrying`): an
    instance the failed attempt moved into the store is found there again."""
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

    def judge_and_store() -> StoreOutcome:
        judged = judge_parts(hospital_id, parts, study)
        return retrying(
            context.sessions, lambda s: store_parts(s, context.store, hospital_id, parts, judged)
        )

    try:
        outcome = await run_in_threadpool(judge_and_store)
    finally:  # what a failed attempt left staged
        for part in parts:
            part.path.unlink(missing_ok=True)
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
    """The objects as multipart/related, each in the transfer syntax the Accept header allows."""
    try:
        syntaxes = negotiate(accept)
    except NotAcceptable as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, detail=str(exc)) from exc
    keys = _object_keys(session, hospital_id, study, series, sop)
    if not keys:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such DICOM object")
    try:
        planned = plan(store, keys, syntaxes)
    except NotAcceptable as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, detail=str(exc)) from exc
    boundary = new_boundary()
    return StreamingResponse(
        multipart_body(store, planned, boundary), media_type=content_type(boundary)
    )


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
        if sop is not None and keys:  # one SOP Instance UID is one object: a result's, found
            break
    return keys


def _object_rows(
    session: Session, hospital_id: str, study: str, series: str | None, sop: str | None
) -> list[tuple[str, str, str, str]]:
    """(key, study, series, SOP instance) of this hospital's matching objects, results first."""
    rows: list[tuple[str, str, str, str]] = []
    for model in (Result, Instance):
        query = select(
            model.object_key,
            model.study_instance_uid,
            model.series_instance_uid,
            model.sop_instance_uid,
        ).where(
            model.hospital_id == hospital_id,
            model.study_instance_uid == study,
            model.purged_at.is_(None),
        )
        if series is not None:
            query = query.where(model.series_instance_uid == series)
        if sop is not None:
            query = query.where(model.sop_instance_uid == sop)
        rows.extend((r[0], r[1], r[2], r[3]) for r in session.execute(query.order_by(model.id)))
    return rows


def _search(
    request: Request,
    session: Session,
    context: HubContext,
    hospital_id: str,
    level: Level,
    **path: str | None,
) -> JSONResponse:
    try:
        query = Query.parse(request.query_params.multi_items(), **path)
    except QueryError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    study, series = path.get("study"), path.get("series")
    if study is not None and not _object_rows(session, hospital_id, study, series, None):
        # the study (series) searched in is not this hospital's: 404 as for WADO-RS
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such study or series")
    base_url = str(request.base_url).rstrip("/") + router.prefix
    found = search(session, context.store, hospital_id, level, query, base_url)
    headers = {"Warning": ", ".join(warning_header("aifi-hub", w) for w in query.warnings)}
    return JSONResponse(found, media_type=DICOM_JSON, headers=headers if query.warnings else None)


@router.get("/studies")
def search_studies(
    request: Request, hospital: CurrentHospital, session: SessionDep, context: ContextDep
) -> JSONResponse:
    """QIDO-RS Search for Studies (PS3.18 §10.6.1), this hospital's only."""
    return _search(request, session, context, hospital.id, "study")


@router.get("/series")
@router.get("/studies/{study}/series")
def search_series(
    request: Request,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    study: str | None = None,
) -> JSONResponse:
    """QIDO-RS Search for Series, in all studies or in one."""
    return _search(request, session, context, hospital.id, "series", study=study)


@router.get("/instances")
@router.get("/studies/{study}/instances")
@router.get("/studies/{study}/series/{series}/instances")
def search_instances(
    request: Request,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    study: str | None = None,
    series: str | None = None,
) -> JSONResponse:
    """QIDO-RS Search for Instances, in all studies, one study or one series."""
    return _search(request, session, context, hospital.id, "instance", study=study, series=series)


@router.get("/studies/{study}/metadata")
@router.get("/studies/{study}/series/{series}/metadata")
@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def retrieve_metadata(
    request: Request,
    study: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    series: str | None = None,
    sop: str | None = None,
) -> StreamingResponse:
    """WADO-RS Retrieve Metadata (PS3.18 §10.4.1.1.2): headers as DICOM JSON, no bulk data."""
    rows = _object_rows(session, hospital.id, study, series, sop)
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such DICOM object")
    base_url = str(request.base_url).rstrip("/") + router.prefix
    store = context.store

    def body() -> Iterator[bytes]:  # one header at a time: a large study never sits in memory
        yield b"["
        for position, (key, study_uid, series_uid, sop_uid) in enumerate(rows):
            url = f"{base_url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
            yield (b"," if position else b"") + json.dumps(metadata(store, key, url)).encode()
        yield b"]"

    return StreamingResponse(body(), media_type=DICOM_JSON)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
def retrieve_bulkdata(
    study: str,
    series: str,
    sop: str,
    tag: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
) -> Response:
    """WADO-RS Retrieve Bulkdata (PS3.18 §10.4.1.1.5): the BulkDataURIs of ``/metadata``."""
    rows = _object_rows(session, hospital.id, study, series, sop)
    if not rows or not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such DICOM object or element")
    value = bulkdata(context.store, rows[0][0], int(tag, 16))
    if value is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="the object has no such element")
    boundary = new_boundary()
    return Response(
        b"".join(write_parts([(_OCTETS, [value])], boundary)),
        media_type=content_type(boundary, _OCTETS),
    )


_INSTANCE = "/studies/{study}/series/{series}/instances/{sop}"


def _instance_key(session: Session, hospital_id: str, study: str, series: str, sop: str) -> str:
    """The storage key of this hospital's instance (result or input); 404 otherwise."""
    rows = _object_rows(session, hospital_id, study, series, sop)
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such DICOM object")
    return rows[0][0]


@router.get(_INSTANCE + "/frames/{frames}")
def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frames: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """WADO-RS Retrieve Frames (PS3.18 §10.4): one part per frame, in the order asked.

    Native octets, or the stored bitstream in its media type (``image/jp2``
    ...) when the Accept asks for it; a frame out of range is 400, an
    Accept that cannot be met 406.
    """
    key = _instance_key(session, hospital.id, study, series, sop)
    try:
        planned = plan_frames(context.store, key, parse_frame_list(frames), accept)
    except FrameError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    except NotAcceptable as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, detail=str(exc)) from exc
    boundary = new_boundary()
    part_type = planned.part_type.split(";")[0]
    return StreamingResponse(
        frames_body(context.store, planned, boundary), media_type=content_type(boundary, part_type)
    )


def _rendered(
    request: Request,
    context: HubContext,
    key: str,
    frame: int,
    accept: str | None,
    viewport: tuple[int, int] | None = None,
) -> Response:
    """One frame of the object rendered as JPEG or PNG (PS3.18 §8.3.5)."""
    try:
        media_type = choose_media_type(accept)
    except NotAcceptable as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, detail=str(exc)) from exc
    try:
        params = RenderParams.parse(request.query_params.multi_items(), viewport)
        ds, pixels = decoded_frame(context.store, key, frame)
    except (RenderError, FrameError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    return Response(render(ds, pixels, params, media_type), media_type=media_type)


@router.get(_INSTANCE + "/rendered")
def retrieve_rendered_instance(
    request: Request,
    study: str,
    series: str,
    sop: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """WADO-RS Retrieve Rendered Instance (PS3.18 §10.4): the first frame of a multi-frame."""
    key = _instance_key(session, hospital.id, study, series, sop)
    return _rendered(request, context, key, 1, accept)


@router.get(_INSTANCE + "/frames/{frames}/rendered")
def retrieve_rendered_frames(
    request: Request,
    study: str,
    series: str,
    sop: str,
    frames: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Retrieve Rendered Frames: a single-frame image media type, so the list's first frame."""
    key = _instance_key(session, hospital.id, study, series, sop)
    try:
        first = parse_frame_list(frames)[0]
    except FrameError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    return _rendered(request, context, key, first, accept)


@router.get(_INSTANCE + "/thumbnail")
@router.get(_INSTANCE + "/frames/{frames}/thumbnail")
def retrieve_thumbnail(
    request: Request,
    study: str,
    series: str,
    sop: str,
    hospital: CurrentHospital,
    session: SessionDep,
    context: ContextDep,
    frames: str = "1",
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """WADO-RS Retrieve Thumbnail (PS3.18 §10.4): rendered to fit 128 x 128 unless a
    ``viewport`` is given."""
    key = _instance_key(session, hospital.id, study, series, sop)
    try:
        first = parse_frame_list(frames)[0]
    except FrameError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    return _rendered(request, context, key, first, accept, THUMBNAIL_VIEWPORT)


@router.get("/studies/{study}/rendered")
@router.get("/studies/{study}/series/{series}/rendered")
def retrieve_rendered_study_or_series(
    study: str, hospital: CurrentHospital, session: SessionDep, series: str | None = None
) -> Response:
    """Rendered studies and series (a multi-part of every rendered instance) are not served."""
    if not _object_rows(session, hospital.id, study, series, None):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such study or series")
    raise HTTPException(
        status.HTTP_400_BAD_REQUEST,
        detail="this hub renders one instance at a time: ask for "
        ".../instances/{sop}/rendered or .../thumbnail",
    )
