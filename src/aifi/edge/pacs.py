"""Sending result objects into the hospital's PACS with C-STORE (PS3.4 Annex B).

Over DICOM TLS (PS3.15 B.9, BCP 195) when the peer has ``tls`` settings; the
uncompressed transfer syntaxes proposed are the destination's
``transfer_syntax`` when it names them.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt

from aifi.dicom.association import answers_to_caller, application_entity
from aifi.dicom.status import describe, is_stored
from aifi.edge.config import DicomPeer
from aifi.edge.tls import client_context

__all__ = ["StoreResult", "contact_of", "store_to_pacs"]

logger = logging.getLogger(__name__)

#: How long to wait for each C-STORE response (pynetdicom's DIMSE timeout).
DIMSE_TIMEOUT_S = 60.0


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return (
        str(meta.TransferSyntaxUID)
        if meta is not None and "TransferSyntaxUID" in meta
        else (ExplicitVRLittleEndian)
    )


def _meta_agreeing(ds: Dataset) -> None:
    """Make the file meta's Transfer Syntax UID say how ``ds`` is encoded (PS3.10 7.1).

    pydicom gives a data set created in memory implicit VR encoding by default
    (``FileDataset``), whatever its file meta says; pynetdicom then sends it
    implicit and warns about the disagreement on every instance. Only the two
    uncompressed little endian syntaxes are touched: a compressed data set is
    sent as it is.
    """
    meta = getattr(ds, "file_meta", None)
    implicit = ds.original_encoding[0]
    if meta is None or implicit is None or "TransferSyntaxUID" not in meta:
        return
    if meta.TransferSyntaxUID not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return
    if UID(meta.TransferSyntaxUID).is_implicit_VR != implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


@dataclass(frozen=True)
class StoreResult:
    sop_instance_uid: str
    ok: bool
    detail: str


def contact_of(results: Sequence[StoreResult]) -> tuple[bool, str]:
    """One store attempt as a contact with the PACS: ok when every object was stored."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return True, f"{len(results)} objects stored"
    return False, f"{len(failed)} of {len(results)} objects not stored: {failed[0].detail}"


def store_to_pacs(
    peer: DicomPeer,
    datasets: Sequence[Dataset],
    on_stored: Callable[[StoreResult], None] | None = None,
) -> list[StoreResult]:
    """Store each dataset over one association; the outcome of each is a value, not an exception."""
    ae = application_entity(peer.calling_ae_title)
    uncompressed = list(
        getattr(peer, "transfer_syntax", None) or [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    pairs = {(str(ds.SOPClassUID), _transfer_syntax(ds)) for ds in datasets}
    for sop_class in sorted({sop_class for sop_class, _ts in pairs}):
        ae.add_requested_context(sop_class, uncompressed)
    # An instance kept compressed travels as it is: one context per (class, syntax).
    for sop_class, syntax in sorted(pairs):
        if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, *uncompressed):
            ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = 30
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = 60
    rejections: list[str] = []

    def keep_rejection(event: evt.Event) -> None:
        primitive: Any = getattr(event, "primitive", None)
        if getattr(primitive, "result", None) == 0x00 and hasattr(primitive, "result_str"):
            rejections.append("")  # accepted: any failure now is about presentation contexts
        elif getattr(primitive, "result", None) in (0x01, 0x02):
            rejections.append(
                f"{primitive.reason_str} ({primitive.source_str}, {primitive.result_str})"
            )

    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        evt_handlers=[(evt.EVT_ACSE_RECV, keep_rejection)],
        tls_args=(client_context(peer.tls), peer.host) if peer.tls is not None else None,
    )
    if not assoc.is_established:
        detail = _association_failure(peer, assoc, rejections, sorted({c for c, _ts in pairs}))
        return [StoreResult(str(ds.SOPInstanceUID), False, detail) for ds in datasets]
    answers_to_caller(assoc)
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    results: list[StoreResult] = []
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if not assoc.is_established:
                results.append(StoreResult(uid, False, "PACS ended the association early"))
                continue
            _meta_agreeing(ds)
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, AttributeError, TypeError) as exc:
                # pynetdicom: no accepted presentation context for this SOP class
                # or transfer syntax, or a data set it cannot encode
                results.append(StoreResult(uid, False, f"not sent: {exc}"))
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            comment = str(status.get("ErrorComment", "")) if status else ""
            if is_stored(code):  # success or a warning (PS3.4 Table B.2-1)
                results.append(StoreResult(uid, True, f"status 0x{code:04X}"))
            elif code == -1:
                results.append(StoreResult(uid, False, "no response from PACS"))
            else:
                why = f" ({comment})" if comment else ""
                results.append(
                    StoreResult(uid, False, f"PACS answered status {describe(code)}{why}")
                )
            if on_stored is not None:
                on_stored(results[-1])
    finally:
        assoc.release()
    return results


def _association_failure(
    peer: DicomPeer, assoc: object, rejections: Sequence[str], sop_classes: Sequence[str]
) -> str:
    """Why no association: rejected (with its PS3.8 reason), no SOP class accepted, or down."""
    where = f"PACS {peer.ae_title} at {peer.host}:{peer.port}"
    if peer.tls is not None and not getattr(assoc, "is_rejected", False) and not rejections:
        return (
            f"{where} not reachable over TLS (no association: is it running, is the port right,"
            " does its certificate chain to tls.ca_bundle and does it accept ours?)"
        )
    if getattr(assoc, "is_rejected", False):
        reason = next((r for r in reversed(rejections) if r), "no reason received")
        return f"{where} rejected the association: {reason}"
    if "" in rejections:  # it answered A-ASSOCIATE-AC, but with every context refused
        names = ", ".join(UID(uid).name for uid in sop_classes)
        return f"{where} accepts none of the SOP classes offered ({names})"
    return f"{where} not reachable (no association: is it running, is the port right?)"
