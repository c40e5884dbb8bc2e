"""The edge's DICOM listener: C-ECHO and C-STORE from the hospital's PACS.

Handlers are small functions bound to pynetdicom events. The C-STORE
handler checks the data set is complete, writes it to disk exactly as
received (never decoded, whatever its transfer syntax), records it, and only
then answers success (PS3.4 B.2.3). Everything slower hangs off "study
stable" in :mod:`aifi.edge.assembly`. A failure inside a handler is recorded
and answered with a failure status; it never breaks the association.

Every refusal is a status of its own cause (PS3.4 Table B.2-1) with an Error
Comment (0000,0902, PS3.7 C.4.2) naming it, and an ``instance-refused`` (or
``store-failed``) event in the edge's state:

=========  ==============================================================
0xA700     Out of Resources: free space below ``listener.min_free_bytes``,
           the disk filled while writing, the state database could not
           record the instance. Sending again later will work.
0xA900     Data Set does not match SOP Class: identity UIDs missing,
           invalid (PS3.5 §9.1) or different from the C-STORE request;
           sequences nested deeper than any IOD.
0xC000     Cannot understand: not a data set, truncated, lengths that lie,
           a deflated stream that is corrupt or inflates beyond
           ``listener.max_inflated_bytes``.
0x0111     Duplicate SOP Instance (PS3.7 C.4.2): this SOP Instance UID was
           already received with different content. The first copy is kept
           (tasks and results refer to it); the second is recorded as an
           ``instance-conflict`` and refused, so the sender's queue shows it.
=========  ==============================================================

An instance is written to a temporary name in its series folder, fsynced,
renamed into place and its folder fsynced, then committed to the state
database with ``synchronous=FULL``: a Success answer means the instance and
its row survive a power cut, and a file under its final name is always
whole. C-STOREs of one SOP Instance UID are serialised, so concurrent
senders of the same instance cannot tear each other's file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import sqlite3
import threading
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from aifi.dicom.association import application_entity
from aifi.dicom.part10 import file_meta
from aifi.dicom.status import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from aifi.dicom.walker import decode_text, scan_dataset, tags_for
from aifi.edge.commitment import STORAGE_COMMITMENT, Commitments, on_event_report
from aifi.edge.config import ListenerSettings
from aifi.edge.state import EdgeState, InstanceRow
from aifi.edge.tls import server_context
from aifi.errors import ConfigError

__all__ = ["ROUTING_KEYWORDS", "EdgeReceiver", "uid_problem"]

logger = logging.getLogger(__name__)

# Attributes kept per series for routing (read from the header of its first instance).
ROUTING_KEYWORDS = (
    "Modality",
    "SOPClassUID",
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "ContrastBolusAgent",
    "SliceThickness",
    "PatientAge",
    "PatientSex",
    "PatientBirthDate",
    "StudyDate",
    "BurnedInAnnotation",
)

_IDENTITY = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_WANTED = tags_for((*ROUTING_KEYWORDS, *_IDENTITY))
_KEYWORD_OF = {tag: kw for kw in (*ROUTING_KEYWORDS, *_IDENTITY) for tag in tags_for((kw,))}

_DUL_LOOP_DELAY_S = 0.0001

_ERROR_COMMENT_MAX = 64  # Error Comment is LO (PS3.5 Table 6.2-1)
_UID_SYNTAX = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_LOCK_STRIPES = 64


def uid_problem(value: object, keyword: str) -> str | None:
    """Why ``value`` is not a valid UID (PS3.5 §9.1), or None when it is one.

    Digits and dots, at most 64 characters, no empty component and no
    leading zero in a component. Only such a value may become part of a path.
    """
    if not isinstance(value, str) or not value:
        return f"it has no {keyword}" if not value else f"its {keyword} has several values"
    if len(value) > 64 or _UID_SYNTAX.fullmatch(value) is None:
        shown = value[:64].encode("ascii", "backslashreplace").decode("ascii")
        return f"its {keyword} {shown!r} is not a valid UID (PS3.5 9.1)"
    return None


class _Refusal(Exception):
    """Why a C-STORE is not answered with success: the status and its reason.

    ``comment`` is short and goes to the sender as Error Comment; ``detail``
    is the full reason, for the log and the events table, recorded as an
    event of ``kind`` (none when empty).
    """

    def __init__(
        self, status: int, comment: str, detail: str, kind: str = "instance-refused"
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.comment = comment
        self.detail = detail
        self.kind = kind


class _SpaceGuard:
    """Free space on the volumes the listener writes to, against ``min_free_bytes``.

    Paused and resumed transitions are logged once and recorded as
    ``receive-paused`` / ``receive-resumed`` events (what ``aifi edge tasks``
    shows); every C-STORE looks again, so receiving resumes by itself.
    """

    def __init__(self, receiver: EdgeReceiver, min_free_bytes: int, paths: list[Path]) -> None:
        self._receiver = receiver
        self.min_free_bytes = min_free_bytes
        self.paths = paths
        self.paused: str | None = None
        self._lock = threading.Lock()

    def free_bytes(self) -> int:
        free = []
        for path in self.paths:
            st = os.statvfs(path)
            free.append(st.f_bavail * st.f_frsize)
        return min(free)

    def check(self, needed: int) -> None:
        """Raise a 0xA700 refusal when writing ``needed`` bytes would go below the threshold."""
        if self.min_free_bytes == 0 and self.paused is None:
            return
        free = self.free_bytes()
        if free - needed >= self.min_free_bytes:
            if self.paused is not None:
                self._resume(free)
            return
        reason = (
            f"only {free} bytes free on the data folder's volume, below"
            f" listener.min_free_bytes ({self.min_free_bytes}); free space or lower the setting"
        )
        self._pause(reason)
        raise _Refusal(OUT_OF_RESOURCES, "edge disk space low; try again later", reason, "")

    def disk_full(self, reason: str) -> None:
        """The volume filled while writing: paused until the next check sees space."""
        self._pause(reason)

    def _pause(self, reason: str) -> None:
        with self._lock:
            if self.paused is not None:
                return
            self.paused = reason
        logger.error("receiving paused: %s", reason)
        self._receiver.record("receive-paused", reason)

    def _resume(self, free: int) -> None:
        with self._lock:
            if self.paused is None:
                return
            self.paused = None
        detail = f"{free} bytes free again (listener.min_free_bytes {self.min_free_bytes})"
        logger.warning("receiving resumed: %s", detail)
        self._receiver.record("receive-resumed", detail)


class EdgeReceiver:
    """A pynetdicom storage SCP that writes instances to the edge's store."""

    def __init__(self, settings: ListenerSettings, state: EdgeState, store_dir: Path) -> None:
        if not settings.allowed_calling_aets:
            raise ConfigError(
                "listener.allowed_calling_aets is empty: add the AE title your PACS sends"
                ' from (e.g. allowed_calling_aets = ["ORTHANC"])'
            )
        self.settings = settings
        self.state = state
        self.store_dir = store_dir
        store_dir.mkdir(parents=True, exist_ok=True)
        self.space = _SpaceGuard(self, settings.min_free_bytes, [store_dir, state.path.parent])
        paused = state.receiving_paused()  # paused before a restart: resumed when space is back
        self.space.paused = str(paused["detail"]) if paused is not None else None
        self._known_dirs: set[Path] = set()
        self._uid_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._server: ThreadedAssociationServer | None = None
        ae = application_entity(settings.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        # PS3.4 J.3.3: a PACS reports storage commitment on an association it opens, in the
        # SCP role of the Storage Commitment Push Model.
        ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        self._commitments = Commitments(state)
        ae.require_calling_aet = list(settings.allowed_calling_aets)
        # PS3.8 9.3.4: A-ASSOCIATE-RJ "called AE title not recognized" (result 1, source 1, 7).
        ae.require_called_aet = settings.check_called_ae_title
        # PS3.15 B.9 (BCP 195): TLS with the hospital's certificates.
        self._ssl = server_context(settings.tls) if settings.tls is not None else None
        ae.maximum_pdu_size = settings.max_pdu
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        ae.maximum_associations = 32
        self._ae = ae

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_EVENT_REPORT, self._on_event_report),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        server = self._ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._ssl,
        )
        assert server is not None
        self._server = server
        logger.info(
            "DICOM listener %s on %s:%d%s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            " (TLS)" if self._ssl is not None else "",
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def record(self, kind: str, detail: str) -> None:
        """Record an event; a state database that cannot take it (disk full) is only logged."""
        try:
            self.state.record_event(kind, detail)
        except (sqlite3.Error, OSError) as exc:
            logger.error("could not record %s event (%s): %s", kind, exc, detail)

    # -- handlers ----------------------------------------------------------
    def _on_conn_open(self, event: Event) -> None:
        # Nagle's algorithm holds back the small PDUs of DICOM; with delayed
        # ACKs on the peer a transfer falls to tens of instances per second.
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # pynetdicom's DUL reactor sleeps 1 ms whenever its queue is empty,
        # which costs every PDU and every C-STORE response up to a
        # millisecond; 0.1 ms keeps an open association cheap while a series
        # streams in (measured: bench/ingest.py).
        event.assoc.dul._run_loop_delay = _DUL_LOOP_DELAY_S

    def _on_rejected(self, event: Event) -> None:
        calling = event.assoc.requestor.ae_title
        address = event.assoc.requestor.address
        called = str(getattr(event.assoc.requestor.primitive, "called_ae_title", "") or "")
        if calling in self.settings.allowed_calling_aets and called != self.settings.ae_title:
            why = (
                f"called AE title {called!r} from {calling!r} at {address} is not"
                f" {self.settings.ae_title!r} (the PACS must call the edge by listener.ae_title,"
                " or set listener.check_called_ae_title = false)"
            )
        else:
            why = (
                f"calling AE title {calling!r} from {address} is not in"
                " listener.allowed_calling_aets"
            )
        logger.warning("refused association: %s", why)
        self.record("association-refused", why)

    def _on_echo(self, event: Event) -> int:
        return SUCCESS

    def _on_event_report(self, event: Event) -> tuple[int, Dataset | None]:
        status = on_event_report(self._commitments, event)
        self.record("commitment-report", f"storage commitment report, answered 0x{status[0]:04X}")
        return status

    def handle_store(self, event: Event) -> int | Dataset:
        """The receive path for a C-STORE on an association the edge opened itself.

        A C-GET (PS3.4 C.4.3) brings the instances as C-STOREs on the
        retrieving association: bound to ``EVT_C_STORE`` there, they are written
        and recorded exactly as from the listener.
        """
        return self._on_store(event)

    def _on_store(self, event: Event) -> int | Dataset:
        calling = str(event.assoc.requestor.ae_title)
        sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        try:
            return self._store(event, calling, sop_uid)
        except _Refusal as refusal:
            return self._refused(refusal, calling, sop_uid)
        except Exception as exc:  # a failing handler must never break the association
            logger.exception("storing instance %s from %s failed", sop_uid, calling)
            return self._refused(
                _Refusal(
                    OUT_OF_RESOURCES,
                    f"edge error: {type(exc).__name__}",
                    f"{type(exc).__name__}: {exc}",
                    "store-failed",
                ),
                calling,
                sop_uid,
            )

    def _refused(self, refusal: _Refusal, calling: str, sop_uid: str) -> Dataset:
        shown = sop_uid[:64].encode("ascii", "backslashreplace").decode("ascii")
        if refusal.kind:
            logger.warning(
                "answered 0x%04X to instance %s from %s: %s",
                refusal.status,
                shown,
                calling,
                refusal.detail,
            )
            self.record(
                refusal.kind,
                f"instance {shown} from {calling} answered 0x{refusal.status:04X}:"
                f" {refusal.detail}",
            )
        rsp = Dataset()
        rsp.Status = refusal.status
        rsp.ErrorComment = refusal.comment[:_ERROR_COMMENT_MAX]
        return rsp

    def store_encoded(
        self, raw: bytes, transfer_syntax: str, sop_class_uid: str, sop_uid: str, source: str
    ) -> int | Dataset:
        """The receive path for a data set that came another way than C-STORE (WADO-RS).

        ``raw`` is the data set encoded in ``transfer_syntax``, without the
        Part 10 preamble and File Meta Information; ``source`` names where it
        came from, as the calling AE title does for a C-STORE. Answers the
        status a C-STORE would have got (0x0000 or a refusal data set).
        """
        try:
            return self._store_raw(
                memoryview(raw), UID(transfer_syntax), sop_class_uid, source, sop_uid
            )
        except _Refusal as refusal:
            return self._refused(refusal, source, sop_uid)

    def _store(self, event: Event, calling: str, sop_uid: str) -> int:
        request = cast(C_STORE, event.request)
        transfer_syntax = UID(event.context.transfer_syntax)
        sop_class_uid = str(request.AffectedSOPClassUID)
        raw: memoryview = cast(BytesIO, request.DataSet).getbuffer()
        return self._store_raw(raw, transfer_syntax, sop_class_uid, calling, sop_uid)

    def _store_raw(
        self,
        raw: memoryview,
        transfer_syntax: UID,
        sop_class_uid: str,
        calling: str,
        sop_uid: str,
    ) -> int:
        problem = uid_problem(sop_uid, "Affected SOP Instance UID")
        if problem is not None:
            raise _Refusal(DOES_NOT_MATCH_SOP_CLASS, "invalid SOP Instance UID", problem)
        header_bytes = file_meta(sop_class_uid, sop_uid, str(transfer_syntax))
        self.space.check(len(header_bytes) + len(raw))

        plain: memoryview | bytes = raw
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            plain = self._inflate(raw)
        header = self._header(plain, transfer_syntax, sop_uid, sop_class_uid)
        study_uid = str(header["StudyInstanceUID"])
        series_uid = str(header["SeriesInstanceUID"])
        routing = {k: v for k, v in header.items() if k in ROUTING_KEYWORDS and v not in ("", [])}

        with self._uid_locks[hash(sop_uid) % _LOCK_STRIPES]:
            if self.state.has_instance(sop_uid):
                return self._received_again(sop_uid, calling, str(transfer_syntax), raw, routing)
            path = self.store_dir / study_uid / series_uid / f"{sop_uid}.dcm"
            size = self._write(path, header_bytes, raw)
            row = InstanceRow(
                sop_instance_uid=sop_uid,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                sop_class_uid=sop_class_uid,
                transfer_syntax_uid=str(transfer_syntax),
                path=path,
                size=size,
            )
            try:
                self.state.add_instance(row, calling, routing)
            except (sqlite3.Error, OSError) as exc:
                path.unlink(missing_ok=True)  # not recorded, so not received
                full = "full" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC
                if full:
                    self.space.disk_full(f"the state database could not grow: {exc}")
                raise _Refusal(
                    OUT_OF_RESOURCES,
                    "edge database full; try again later" if full else "edge database error",
                    f"the instance could not be recorded in the state database: {exc}",
                    "store-failed",
                ) from exc
        return SUCCESS

    def _inflate(self, raw: memoryview) -> bytes:
        """Inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5), bounded."""
        limit = self.settings.max_inflated_bytes
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise _Refusal(
                CANNOT_UNDERSTAND, "deflated data set is corrupt", f"the deflate stream: {exc}"
            ) from exc
        if len(plain) > limit:
            raise _Refusal(
                CANNOT_UNDERSTAND,
                "inflated data set exceeds the edge's limit",
                f"{len(raw)} deflated bytes inflate to more than listener.max_inflated_bytes"
                f" ({limit})",
            )
        if not inflater.eof:
            raise _Refusal(
                CANNOT_UNDERSTAND,
                "deflated data set is cut short",
                "the deflate stream ends before its last block",
            )
        return plain

    def _header(
        self, plain: memoryview | bytes, transfer_syntax: UID, sop_uid: str, sop_class_uid: str
    ) -> dict[str, str | list[str]]:
        """The identity and routing attributes, once the data set is known whole and sound."""
        scan = scan_dataset(
            plain,
            implicit_vr=transfer_syntax.is_implicit_VR,
            little_endian=transfer_syntax.is_little_endian,
            wanted=_WANTED,
            max_depth=self.settings.max_nesting_depth,
        )
        if scan.reason is not None:
            if scan.problem == "too-deep":
                raise _Refusal(DOES_NOT_MATCH_SOP_CLASS, "sequences nested too deep", scan.reason)
            comment = (
                "data set truncated or not DICOM"
                if scan.problem == "truncated"
                else "malformed data set"
            )
            raise _Refusal(CANNOT_UNDERSTAND, comment, scan.reason)
        header = {_KEYWORD_OF[tag]: decode_text(tag, raw) for tag, raw in scan.values.items()}
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            problem = uid_problem(header.get(keyword), keyword)
            if problem is not None:
                comment = f"missing {keyword}" if keyword not in header else f"invalid {keyword}"
                raise _Refusal(DOES_NOT_MATCH_SOP_CLASS, comment, problem)
        if header.get("SOPInstanceUID", sop_uid) != sop_uid:
            raise _Refusal(
                DOES_NOT_MATCH_SOP_CLASS,
                "SOP Instance UID differs from the request",
                "its SOP Instance UID differs from the one in the C-STORE request",
            )
        if header.get("SOPClassUID", sop_class_uid) != sop_class_uid:
            raise _Refusal(
                DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class UID differs from the request",
                "its SOP Class UID differs from the one in the C-STORE request",
            )
        return header

    def _received_again(
        self,
        sop_uid: str,
        calling: str,
        transfer_syntax: str,
        raw: memoryview,
        routing: dict[str, str | list[str]],
    ) -> int:
        """An instance already stored: the same is success; different content is a conflict."""
        row = self.state.instance(sop_uid)
        assert row is not None
        if row.transfer_syntax_uid != transfer_syntax:
            self.record(
                "instance-duplicate",
                f"instance {sop_uid} from {calling} sent again in transfer syntax"
                f" {transfer_syntax} (first in {row.transfer_syntax_uid}); the first copy is kept",
            )
            self._record_again(row, calling, routing)
            return SUCCESS
        offset = len(file_meta(row.sop_class_uid, sop_uid, row.transfer_syntax_uid))
        try:
            with row.path.open("rb") as fp:
                fp.seek(offset)
                same = fp.read(len(raw) + 1) == raw
        except FileNotFoundError:
            same = False
        if same:
            logger.debug("instance %s already received", sop_uid)
            self._record_again(row, calling, routing)
            return SUCCESS
        raise _Refusal(
            DUPLICATE_SOP_INSTANCE,
            "SOP Instance UID already received with other content",
            f"its SOP Instance UID was already received with different content"
            f" ({row.size - offset} bytes stored, {len(raw)} bytes now); the first copy is"
            " kept; the sender reuses a UID for different data",
            "instance-conflict",
        )

    def _record_again(
        self, row: InstanceRow, calling: str, routing: dict[str, str | list[str]]
    ) -> None:
        """Tell the state its copy was sent again: a study re-sent after failed work re-opens."""
        try:
            self.state.add_instance(row, calling, routing)
        except (sqlite3.Error, OSError) as exc:
            raise _Refusal(
                OUT_OF_RESOURCES,
                "edge database error",
                f"the instance sent again could not be recorded in the state database: {exc}",
                "store-failed",
            ) from exc

    def _write(self, path: Path, header: bytes, raw: memoryview) -> int:
        """Write Part 10 header and the data set as received under ``path``, whole or not at all.

        Written to a temporary name in the same folder, fsynced, renamed onto
        ``path`` and the folder fsynced (when ``listener.fsync``), so a file
        under its final name is always complete. Every write is checked: a
        short write is continued, a volume that is full is a 0xA700 refusal
        and leaves nothing behind.
        """
        folder = path.parent
        if folder not in self._known_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(folder)
        part = folder / f".{path.name}.part"
        try:
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            except FileNotFoundError:  # the folder was purged since we made it
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                _write_all(fd, header, raw)
                if self.settings.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            part.replace(path)
        except OSError as exc:
            part.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                reason = f"the data folder's volume is full ({os.strerror(exc.errno)})"
                self.space.disk_full(reason)
                raise _Refusal(
                    OUT_OF_RESOURCES, "edge disk full; try again later", reason, "store-failed"
                ) from exc
            raise _Refusal(
                OUT_OF_RESOURCES,
                "edge could not write the instance",
                f"writing {path.name} failed: {exc}",
                "store-failed",
            ) from exc
        if self.settings.fsync:
            _fsync_dir(folder)
        return len(header) + len(raw)


def _write_all(fd: int, header: bytes, raw: memoryview) -> None:
    """``os.writev`` until every byte is written; a write that makes no progress is ENOSPC."""
    pending: list[memoryview] = [memoryview(header), raw]
    while pending:
        written = os.writev(fd, pending)
        if written == 0:
            raise OSError(errno.ENOSPC, "no byte could be written")
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending.pop(0)
        if pending and written:
            pending[0] = pending[0][written:]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the directory entry is the folder's data)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
