"""Accept or refuse each instance of a STOW-RS request, and answer it.

For every staged part the header is read for its UIDs (pixel data never
enters memory), then the staged file's bytes are checked for identity in
full (:func:`aifi.deid.verify.check_deidentified_file`: File Meta
Information, every sequence, duplicate tags, whatever follows Pixel Data)
against the profile's allowlist, and only then is the file moved into the
store and recorded: the check is before the store, never after. A refused
instance is not stored and its staged file is deleted; it is listed in the
Failed SOP Sequence (0008,1198) of the response with a Failure Reason
(0008,1197) from PS3.18 Table I.2-2, and its reason (attributes named by
keyword and tag, never a value) is kept in the ``refusals`` table.
Re-sending an instance already stored for the same hospital succeeds
without storing it twice.

Each request adds one event to the audit trail (``stow.received``, or
``stow.refused`` when nothing was stored): counts, bytes and failure
reasons, never an identity; one event per request keeps STOW fast.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aifi.deid.verify import check_deidentified_file
from aifi.dicom.status import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    STUDY_MISMATCH,
    stow_http_status,
)
from aifi.errors import StorageError
from aifi.hub.auditing import record
from aifi.hub.drift import Figures, input_statistics
from aifi.hub.models import Instance, Refusal, utcnow
from aifi.hub.storage import ObjectStore, is_uid, object_key
from aifi.hub.stow import DICOM_MEDIA_TYPE, ReceivedPart

__all__ = [
    "Accepted",
    "Failed",
    "Judged",
    "StoreOutcome",
    "Stored",
    "judge_parts",
    "store_parts",
]

logger = logging.getLogger(__name__)

# Failure Reasons (PS3.18 Table I.2-2) come from the one table, aifi.dicom.status; a
# part that still carries identity fails the identity check: "Processing failure".


@dataclass(frozen=True)
class Stored:
    """An instance the hub now holds (newly or from an earlier request)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    size: int = field(default=0, compare=False)  # bytes newly stored (0 when re-sent)


@dataclass(frozen=True)
class Failed:
    """An instance the hub did not store, and why."""

    failure_reason: int
    reason: str
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None


@dataclass
class StoreOutcome:
    """What happened to each part of one STOW-RS request."""

    stored: list[Stored] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)

    @property
    def http_status(self) -> HTTPStatus:
        """PS3.18 §10.5.3: 200 all stored, 202 some stored, 409 none stored."""
        return stow_http_status(len(self.stored), len(self.failed))

    def to_dicom_json(self, base_url: str) -> dict[str, Any]:
        """The Store Instances Response Module (PS3.18 §10.5.3.1) as DICOM JSON."""
        ds = Dataset()
        if self.stored:
            study_uids = {s.study_instance_uid for s in self.stored}
            if len(study_uids) == 1:
                ds.RetrieveURL = f"{base_url}/studies/{study_uids.pop()}"
            ds.ReferencedSOPSequence = [_referenced(s, base_url) for s in self.stored]
        if self.failed:
            ds.FailedSOPSequence = [_failed(f) for f in self.failed]
        return ds.to_json_dict()


def _referenced(stored: Stored, base_url: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = stored.sop_class_uid
    item.ReferencedSOPInstanceUID = stored.sop_instance_uid
    item.RetrieveURL = (
        f"{base_url}/studies/{stored.study_instance_uid}/series/"
        f"{stored.series_instance_uid}/instances/{stored.sop_instance_uid}"
    )
    return item


def _failed(failed: Failed) -> Dataset:
    item = Dataset()
    if failed.sop_class_uid:
        item.ReferencedSOPClassUID = failed.sop_class_uid
    if failed.sop_instance_uid:
        item.ReferencedSOPInstanceUID = failed.sop_instance_uid
    item.FailureReason = failed.failure_reason
    item.TextValue = failed.reason  # Text Value (0040,A160): what to do; names, never values
    return item


@dataclass(frozen=True)
class Accepted:
    """A part that passed every check: what it is, where it goes, its acquisition figures."""

    part: ReceivedPart
    stored: Stored
    key: str
    figures: Figures  # not the header: a request may carry thousands of small instances


Judged = Accepted | Failed


def judge_parts(
    hospital_id: str, parts: Sequence[ReceivedPart], study_instance_uid: str | None
) -> list[Judged]:
    """Read and check each staged part once (no database): accepted, or refused and why.

    Done before, and apart from, the transaction that records them
    (:func:`store_parts`): a run of that transaction again after a dropped
    connection finds the parts it had already moved into the store gone from
    staging, and must still know what they were.
    """
    return [_judge(hospital_id, part, study_instance_uid) for part in parts]


def store_parts(
    session: Session,
    store: ObjectStore,
    hospital_id: str,
    parts: Sequence[ReceivedPart],
    judged: Sequence[Judged],
) -> StoreOutcome:
    """Store and record the accepted parts for ``hospital_id`` in one transaction.

    One query finds the instances already held, each new one is moved into
    the store and its row added, and the refusals and the request's audit
    event go with them in the same commit (one commit per request, not one
    per instance: a 600-slice CT is a few requests). Safe to run again on a
    new session after a database error (:func:`aifi.hub.db.retrying`): a part
    the failed attempt moved into the store is found there under its key,
    and only then recorded. ``judged`` is :func:`judge_parts` of ``parts``,
    whose staged files are consumed.
    """
    for _attempt in range(3):
        try:
            outcome = _store_judged(session, store, hospital_id, judged)
            session.commit()  # the instances, the refusals and the request's event, together
        except IntegrityError:  # a concurrent request stored one of them first: look again
            session.rollback()
            continue
        for part in parts:  # refused, re-sent or duplicated ones; stored ones were moved
            part.path.unlink(missing_ok=True)
        return outcome
    raise StorageError("instances of this request kept being stored concurrently; send it again")


def _store_judged(
    session: Session, store: ObjectStore, hospital_id: str, judged: Sequence[Judged]
) -> StoreOutcome:
    accepted = [item for item in judged if isinstance(item, Accepted)]
    held = _held(session, hospital_id, {a.stored.sop_instance_uid for a in accepted})
    outcome = StoreOutcome()
    done: set[str] = set()
    for item in judged:
        if isinstance(item, Failed):
            outcome.failed.append(item)
            continue
        uid = item.stored.sop_instance_uid
        earlier = held.get(uid)
        if uid in done or (earlier is not None and earlier.purged_at is None):
            logger.debug("instance %s re-sent; already stored", uid)
            outcome.stored.append(item.stored)
            continue
        size = _put(store, item)
        if isinstance(size, Failed):
            outcome.failed.append(size)
            continue
        done.add(uid)
        if earlier is not None:  # sent again after retention purged it
            earlier.object_key, earlier.size = item.key, size
            earlier.received_at, earlier.purged_at = utcnow(), None
        else:
            stored = item.stored
            session.add(
                Instance(
                    hospital_id=hospital_id,
                    study_instance_uid=stored.study_instance_uid,
                    series_instance_uid=stored.series_instance_uid,
                    sop_instance_uid=uid,
                    sop_class_uid=stored.sop_class_uid,
                    object_key=item.key,
                    size=size,
                )
            )
            session.add(input_statistics(hospital_id, item.figures))  # for drift (drift.py)
        outcome.stored.append(dataclasses.replace(item.stored, size=size))
    for failed in outcome.failed:
        _record_refusal(session, hospital_id, failed)
    _audit(session, hospital_id, outcome)
    return outcome


def _put(store: ObjectStore, item: Accepted) -> int | Failed:
    """Move the part into the store; its size, or why not."""
    stored = item.stored
    if not item.part.path.exists():  # moved by an attempt whose commit was lost
        size = store.size(item.key)
        if size is not None:
            return size
        return Failed(
            OUT_OF_RESOURCES,
            "the hub lost its database connection while storing this instance; send it again",
            stored.sop_instance_uid,
            stored.sop_class_uid,
        )
    try:
        return store.put(item.part.path, item.key)
    except StorageError as exc:
        logger.error("cannot store instance %s: %s", stored.sop_instance_uid, exc)
        return Failed(OUT_OF_RESOURCES, str(exc), stored.sop_instance_uid, stored.sop_class_uid)


def _audit(session: Session, hospital_id: str, outcome: StoreOutcome) -> None:
    new = [s for s in outcome.stored if s.size]
    record(
        session,
        "stow.received" if outcome.stored else "stow.refused",
        actor=f"hospital:{hospital_id}",
        hospital=hospital_id,
        detail={
            "stored": len(outcome.stored),
            "new": len(new),
            "bytes": sum(s.size for s in new),
            "studies": len({s.study_instance_uid for s in outcome.stored}),
            "refused": len(outcome.failed),
            "failure_reasons": sorted({f"{f.failure_reason:04X}" for f in outcome.failed}),
        },
    )


def _judge(hospital_id: str, part: ReceivedPart, expected_study: str | None) -> Judged:
    if part.media_type not in ("", DICOM_MEDIA_TYPE):
        return Failed(CANNOT_UNDERSTAND, f"part is {part.media_type}, not {DICOM_MEDIA_TYPE}")
    try:
        ds = pydicom.dcmread(part.path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on broken input
        return Failed(CANNOT_UNDERSTAND, f"not a DICOM Part 10 file ({type(exc).__name__})")
    sop_class_uid = str(ds.get("SOPClassUID", ""))
    sop_instance_uid = str(ds.get("SOPInstanceUID", ""))
    study_uid = str(ds.get("StudyInstanceUID", ""))
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    for keyword, uid in (
        ("SOPClassUID", sop_class_uid),
        ("SOPInstanceUID", sop_instance_uid),
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
    ):
        if not is_uid(uid):
            return Failed(
                CANNOT_UNDERSTAND,
                f"{keyword} is missing or not a valid UID",
                sop_instance_uid if is_uid(sop_instance_uid) else None,
                sop_class_uid if is_uid(sop_class_uid) else None,
            )
    if expected_study is not None and study_uid != expected_study:
        return Failed(
            STUDY_MISMATCH,
            f"instance belongs to study {study_uid}, not to the request's {expected_study}",
            sop_instance_uid,
            sop_class_uid,
        )
    problems = check_deidentified_file(part.path)
    if problems:
        return Failed(
            PROCESSING_FAILURE,
            "not de-identified: " + "; ".join(problems),
            sop_instance_uid,
            sop_class_uid,
        )
    stored = Stored(study_uid, series_uid, sop_instance_uid, sop_class_uid)
    key = object_key("instances", hospital_id, study_uid, series_uid, sop_instance_uid)
    return Accepted(part, stored, key, Figures.of(ds))


def _held(session: Session, hospital_id: str, sop_instance_uids: set[str]) -> dict[str, Instance]:
    """The hospital's instance rows for these SOP Instance UIDs, in one query."""
    if not sop_instance_uids:
        return {}
    rows = session.scalars(
        select(Instance).where(
            Instance.hospital_id == hospital_id,
            Instance.sop_instance_uid.in_(sorted(sop_instance_uids)),
        )
    )
    return {row.sop_instance_uid: row for row in rows}


def _record_refusal(session: Session, hospital_id: str, failed: Failed) -> None:
    logger.warning(
        "refused instance %s (failure reason %04X): %s",
        failed.sop_instance_uid or "<unknown>",
        failed.failure_reason,
        failed.reason,
    )
    session.add(
        Refusal(
            hospital_id=hospital_id,
            sop_instance_uid=failed.sop_instance_uid,
            failure_reason=failed.failure_reason,
            reason=failed.reason,
        )
    )
