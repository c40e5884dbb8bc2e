"""pynetdicom application entities as aifi makes them, and a guard for a race in pynetdicom."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from aifi.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["answers_to_caller", "application_entity"]


def answers_to_caller(assoc: Association) -> None:
    """Keep pynetdicom's reactor thread from taking the peer's answers (a race in pynetdicom).

    pynetdicom (3.0.4, and its main branch of 2026-03) runs a reactor thread in
    a requestor association too; it takes any complete DIMSE message off the
    queue unless a ``send_*`` method has paused it. The pause has a hole:
    ``send_c_store`` unpauses the reactor after each response, and when the
    next ``send_c_store`` comes before the woken reactor thread has run, it
    finds the reactor still marked paused and sends. The reactor, run late by a
    busy scheduler, then takes the C-STORE-RSP, logs "Received unexpected
    C-STORE service message" (a response is not a valid request) and the store
    waits for the DIMSE timeout. The reactor is the only caller of the
    non-blocking ``get_msg``; on an association where this side only asks
    (C-STORE, N-ACTION, C-ECHO, C-FIND; C-GET's sub-operations are read by the
    blocking caller too), it must get nothing. N-EVENT-REPORT requests do not
    go through the queue (pynetdicom serves them in a thread of their own).
    Call it right after the association is established, before any request.
    """
    dimse = assoc.dimse
    blocking_get = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block:
            return None, None
        return blocking_get(block=True)

    dimse.get_msg = get_msg  # type: ignore[method-assign]


def application_entity(ae_title: str) -> AE:
    """A pynetdicom AE that names aifi in its associations (PS3.7 D.3.3.2).

    The A-ASSOCIATE's Implementation Class UID and Version Name are the same
    as the File Meta Information aifi writes (PS3.10 §7.1,
    :mod:`aifi.dicom.part10`), so a PACS log or a network trace shows one
    implementation, not pynetdicom's default.
    """
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae
