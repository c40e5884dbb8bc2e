"""The edge's DICOM listener: C-ECHO and C-STORE from the hospital's PACS.

Handlers are small functions bound to pynetdicom events. The C-STORE
handler checks the data set is complete, writes it to disk exactly as
received (never decoded, whatever its transfer syntax), records it, and only
then answers success (PS3.4 B.2.3). Everything slower hangs off "study
stable" in :mod:`aifi.edge.assembly`. A failure inside a handler is recorded
and answered with a failure status; it never breaks the association.
"""

from __future__ import annotations

import logging
import os
import socket
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from aifi.edge.config import ListenerSettings
from aifi.edge.dataset_scan import decode_text, scan_dataset, tags_for
from aifi.edge.file_meta import part10_header
from aifi.edge.state import EdgeState, InstanceRow
from aifi.errors import ConfigError

__all__ = ["ROUTING_KEYWORDS", "EdgeReceiver"]

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

# PS3.4 Table B.2-1 C-STORE status codes
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210


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
        self._known_dirs: set[Path] = set()
        self._server: ThreadedAssociationServer | None = None
        ae = AE(ae_title=settings.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(settings.allowed_calling_aets)
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
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        server = self._ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )
        assert server is not None
        self._server = server
        logger.info(
            "DICOM listener %s on %s:%d", self.settings.ae_title, self.settings.host, self.port
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

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
        logger.warning("refused association from %s at %s: AE title not allowed", calling, address)
        self.state.record_event(
            "association-refused",
            f"calling AE title {calling!r} from {address} is not in listener.allowed_calling_aets",
        )

    def _on_echo(self, event: Event) -> int:
        return SUCCESS

    def _on_store(self, event: Event) -> int:
        calling = str(event.assoc.requestor.ae_title)
        sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        try:
            return self._store(event, calling, sop_uid)
        except Exception as exc:  # a failing handler must never break the association
            logger.exception("storing instance %s from %s failed", sop_uid, calling)
            self.state.record_event(
                "store-failed", f"instance {sop_uid} from {calling}: {type(exc).__name__}: {exc}"
            )
            return OUT_OF_RESOURCES

    def _store(self, event: Event, calling: str, sop_uid: str) -> int:
        if self.state.has_instance(sop_uid):
            logger.debug("instance %s already received; ignored", sop_uid)
            return SUCCESS
        transfer_syntax = UID(event.context.transfer_syntax)
        request = cast(C_STORE, event.request)
        raw: memoryview = cast(BytesIO, request.DataSet).getbuffer()
        plain: memoryview | bytes = raw
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            plain = zlib.decompress(raw, -zlib.MAX_WBITS)
        scan = scan_dataset(
            plain,
            implicit_vr=transfer_syntax.is_implicit_VR,
            little_endian=transfer_syntax.is_little_endian,
            wanted=_WANTED,
        )
        header = {_KEYWORD_OF[tag]: decode_text(tag, raw) for tag, raw in scan.values.items()}
        reason = scan.reason
        if reason is None:
            if not header.get("StudyInstanceUID") or not header.get("SeriesInstanceUID"):
                reason = "it has no Study or Series Instance UID"
            elif header.get("SOPInstanceUID", sop_uid) != sop_uid:
                reason = "its SOP Instance UID differs from the one in the C-STORE request"
        if reason is not None:
            logger.warning("refused instance %s from %s: %s", sop_uid, calling, reason)
            self.state.record_event(
                "instance-refused", f"instance {sop_uid} from {calling} refused: {reason}"
            )
            return CANNOT_UNDERSTAND

        study_uid = str(header["StudyInstanceUID"])
        series_uid = str(header["SeriesInstanceUID"])
        folder = self.store_dir / study_uid / series_uid
        if folder not in self._known_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(folder)
        path = folder / f"{sop_uid}.dcm"
        header_bytes = part10_header(
            str(request.AffectedSOPClassUID), sop_uid, str(transfer_syntax)
        )
        size = self._write(path, header_bytes, raw)
        row = InstanceRow(
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            sop_class_uid=str(request.AffectedSOPClassUID),
            transfer_syntax_uid=str(transfer_syntax),
            path=path,
            size=size,
        )
        routing = {k: v for k, v in header.items() if k in ROUTING_KEYWORDS and v not in ("", [])}
        self.state.add_instance(row, calling, routing)
        return SUCCESS

    def _write(self, path: Path, header: bytes, raw: memoryview) -> int:
        """Write Part 10 header and the data set as received, then fsync.

        The file is written in place: it counts as received only once its
        row is in the state database (after this returns), so a file cut
        short by a crash is never used, and a re-send overwrites it.
        """
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.writev(fd, (header, raw))
            if self.settings.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return len(header) + len(raw)
