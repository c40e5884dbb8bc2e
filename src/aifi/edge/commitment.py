"""Storage Commitment Push Model (PS3.4 Annex J): "delivered" means "committed".

After the result objects are stored, the edge asks the PACS to commit to
keeping them: an N-ACTION (Action Type ID 1, PS3.4 J.3.2) on the Storage
Commitment Push Model SOP Class carrying a Transaction UID and the
Referenced SOP Sequence. The PACS answers later with an N-EVENT-REPORT
(J.3.3): Event Type ID 1 when every object is committed, 2 when some failed
(Failed SOP Sequence with a Failure Reason). Orthanc sends it on a new
association to the requesting AE title, so the edge's listener accepts the
report (:func:`on_event_report`, bound in :mod:`aifi.edge.scp`) and the
outcome is kept here, per transaction, until delivery reads it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom.events import Event

from aifi.dicom.association import answers_to_caller, application_entity
from aifi.dicom.status import PROCESSING_FAILURE, SUCCESS, describe
from aifi.edge.config import DicomPeer
from aifi.edge.state import EdgeState
from aifi.edge.tls import client_context

__all__ = [
    "STORAGE_COMMITMENT",
    "Commitment",
    "CommitmentStep",
    "Commitments",
    "on_event_report",
]

logger = logging.getLogger(__name__)

#: Storage Commitment Push Model SOP Class and its well-known instance (PS3.4 J.3.1).
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"

#: Where one destination's commitment stands (:meth:`Commitments.settle`).
CommitmentStep = Literal["committed", "waiting", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commitments (
    transaction_uid TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    requested_at REAL NOT NULL,
    detail TEXT
)
"""


@dataclass(frozen=True)
class Commitment:
    transaction_uid: str
    task_id: str
    destination: str
    state: str  # requested | committed | failed (the report said so) | abandoned
    requested_at: float
    detail: str | None


class Commitments:
    """The edge's storage commitment transactions, in its state database."""

    def __init__(self, state: EdgeState) -> None:
        self.state = state
        with state._tx() as db:  # an additive table beside the edge's own schema
            db.execute(_SCHEMA)

    def latest(self, task_id: str, destination: str) -> Commitment | None:
        row = (
            self.state._conn()
            .execute(
                "SELECT transaction_uid, task_id, destination, state, requested_at, detail"
                " FROM commitments WHERE task_id=? AND destination=?"
                " ORDER BY requested_at DESC LIMIT 1",
                (task_id, destination),
            )
            .fetchone()
        )
        return Commitment(*row) if row is not None else None

    def request(
        self,
        peer: DicomPeer,
        task_id: str,
        destination: str,
        references: Sequence[tuple[str, str]],
    ) -> tuple[bool, str]:
        """Send the N-ACTION for ``(SOP Class UID, SOP Instance UID)`` pairs; False: not asked.

        The transaction is written before it is sent: the report may come
        back on the listener before the N-ACTION's own response does.
        """
        transaction_uid = generate_uid()
        with self.state._tx() as db:
            db.execute(
                "INSERT INTO commitments VALUES (?,?,?,?,?,?)",
                (transaction_uid, task_id, destination, "requested", time.time(), None),
            )
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        ds.ReferencedSOPSequence = []
        for sop_class, sop_instance in references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            ds.ReferencedSOPSequence.append(item)
        ae = application_entity(peer.calling_ae_title)
        ae.add_requested_context(STORAGE_COMMITMENT)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        where = f"PACS {peer.ae_title} at {peer.host}:{peer.port}"
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            tls_args=(client_context(peer.tls), peer.host) if peer.tls is not None else None,
        )
        # A request that never reached the PACS is abandoned, not failed: there is no
        # report to wait for, and the next attempt asks again with a new transaction.
        if not assoc.is_established:
            self._set(transaction_uid, "abandoned", f"{where}: no association for the request")
            return False, f"{where} refused or missed the storage commitment association"
        answers_to_caller(assoc)  # pynetdicom's reactor must not take the N-ACTION answer
        try:
            status, _reply = assoc.send_n_action(
                ds, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
            )
        except (ValueError, AttributeError) as exc:  # no accepted context for the SOP class
            status, why = None, f"{where} does not offer storage commitment ({exc})"
        else:
            why = f"{where} sent no answer to the storage commitment request"
        finally:
            assoc.release()
        code = int(getattr(status, "Status", -1)) if status else -1
        if code != SUCCESS:
            why = why if code == -1 else f"{where} answered the N-ACTION with {describe(code)}"
            self._set(transaction_uid, "abandoned", why)
            return False, why
        return True, f"storage commitment requested (transaction {transaction_uid})"

    def settle(
        self,
        peer: DicomPeer,
        task_id: str,
        destination: str,
        references: Sequence[tuple[str, str]],
    ) -> tuple[CommitmentStep, str]:
        """Where ``destination``'s commitment of ``task_id`` stands; ask for it when not yet.

        ``committed``: the report said every object is kept. ``waiting``: a
        request is out (or was just sent) and its report has not come.
        ``failed``: the report listed failures, none came within
        ``peer.commitment_timeout_s``, or the request could not be sent; the
        caller counts a failed attempt and the next call asks again with a
        new transaction.
        """
        latest = self.latest(task_id, destination)
        if latest is not None and latest.state == "committed":
            return "committed", latest.detail or "committed"
        if latest is not None and latest.state == "requested":
            if time.time() - latest.requested_at < peer.commitment_timeout_s:
                return "waiting", f"storage commitment requested ({latest.transaction_uid})"
            self.abandon(latest.transaction_uid, "no report in time")
            return "failed", (
                f"{destination} sent no storage commitment report within"
                f" {peer.commitment_timeout_s:.0f} s (is the edge's AE title a modality"
                " there, with storage commitment allowed?)"
            )
        if latest is not None and latest.state == "failed":
            self.abandon(latest.transaction_uid, latest.detail or "failed")
            return "failed", f"storage commitment failed: {latest.detail}"
        ok, detail = self.request(peer, task_id, destination, references)
        self.state.record_contact(destination, ok, detail)
        if not ok:
            return "failed", f"storage commitment not requested: {detail}"
        self.state.record_event("commitment-requested", f"{destination}: {detail}", task_id=task_id)
        return "waiting", detail

    def report(self, ds: Dataset, event_type: int | None) -> bool:
        """Record an N-EVENT-REPORT (PS3.4 J.3.3); False: an unknown transaction."""
        transaction_uid = str(ds.get("TransactionUID", ""))
        committed = len(ds.get("ReferencedSOPSequence", []))
        failed = ds.get("FailedSOPSequence", [])
        if event_type == 1 and not failed:
            state, detail = "committed", f"{committed} objects committed"
        else:
            reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
            state = "failed"
            detail = (
                f"{len(failed)} objects not committed (failure reason {', '.join(reasons)});"
                f" {committed} committed"
            )
        with self.state._tx() as db:
            cur = db.execute(
                "UPDATE commitments SET state=?, detail=? WHERE transaction_uid=?",
                (state, detail, transaction_uid),
            )
        return cur.rowcount > 0

    def abandon(self, transaction_uid: str, detail: str) -> None:
        """A transaction given up on: the next attempt asks again with a new one."""
        self._set(transaction_uid, "abandoned", detail)

    def _set(self, transaction_uid: str, state: str, detail: str) -> None:
        with self.state._tx() as db:
            db.execute(
                "UPDATE commitments SET state=?, detail=? WHERE transaction_uid=?",
                (state, detail, transaction_uid),
            )


def on_event_report(commitments: Commitments, event: Event) -> tuple[int, Dataset | None]:
    """The listener's N-EVENT-REPORT handler: record the outcome, answer Success."""
    calling = str(event.assoc.requestor.ae_title)
    try:
        known = commitments.report(event.event_information, event.event_type)
    except (sqlite3.Error, OSError, ValueError, KeyError, AttributeError):
        logger.exception("storage commitment report from %s could not be recorded", calling)
        return PROCESSING_FAILURE, None  # PS3.7 C.4.2.1.4: the PACS may send again
    if not known:
        logger.warning("storage commitment report from %s for an unknown transaction", calling)
    return SUCCESS, None
