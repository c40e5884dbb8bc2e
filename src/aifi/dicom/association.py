"""pynetdicom associations on which aifi only asks: a guard for a race in pynetdicom."""

from __future__ import annotations

from typing import Any

from pynetdicom.association import Association

__all__ = ["answers_to_caller"]


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
