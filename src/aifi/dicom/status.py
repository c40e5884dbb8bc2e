"""DICOM status codes aifi answers and reads, with their names and classes.

One table for every DIMSE service aifi speaks (C-ECHO, C-STORE, C-FIND,
C-MOVE, C-GET, N-ACTION and N-EVENT-REPORT of Storage Commitment), for the
Failure Reason (0008,1197) of a STOW-RS response (PS3.18 §10.5.3, whose
failure reasons are the C-STORE statuses) and for the Unified Procedure
Step statuses (PS3.4 Annex CC) that the hub's UPS-RS names in its
``Warning`` header (PS3.18 Table 11.7.3-2 carries them over HTTP).

Every status falls in one class (PS3.7 C.1, "Status Type"): success (0000),
warning (0001, 0107, 0116, Bxxx), failure (01xx, 02xx, Axxx, Cxxx),
cancel (FE00) or pending (FF00, FF01). :func:`status_class` says which,
also for a code this table does not name, so a peer's answer is judged by
the Standard's ranges rather than by a list of the codes we happen to know.

:data:`STUDY_MISMATCH` (0xC409) is aifi's own: a STOW-RS request to
``/studies/{StudyInstanceUID}`` carried an instance of another study
(PS3.18 §10.5.1 says such an instance fails and names no code for it); it
lies in the C-STORE range of Cxxx, "Cannot understand".
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal

__all__ = [
    "CANCEL",
    "CANNOT_UNDERSTAND",
    "DOES_NOT_MATCH_SOP_CLASS",
    "DUPLICATE_SOP_INSTANCE",
    "MOVE_DESTINATION_UNKNOWN",
    "OUT_OF_RESOURCES",
    "PENDING",
    "PENDING_WITH_WARNINGS",
    "PROCESSING_FAILURE",
    "STATUSES",
    "STUDY_MISMATCH",
    "SUBOPERATIONS_FAILED",
    "SUCCESS",
    "UPS_ALREADY_CANCELED",
    "UPS_ALREADY_COMPLETED",
    "UPS_ALREADY_IN_PROGRESS",
    "UPS_FINAL_STATE_REQUIREMENTS_NOT_MET",
    "UPS_IS_COMPLETED",
    "UPS_MAY_NO_LONGER_BE_UPDATED",
    "UPS_NOT_YET_IN_PROGRESS",
    "UPS_NO_SUCH_INSTANCE",
    "UPS_SCHEDULED_ONLY_VIA_N_CREATE",
    "UPS_WRONG_TRANSACTION_UID",
    "Known",
    "StatusClass",
    "describe",
    "is_pending",
    "is_stored",
    "reason",
    "status_class",
    "stow_http_status",
]

StatusClass = Literal["success", "warning", "failure", "cancel", "pending"]

SUCCESS = 0x0000
#: PS3.7 C.4.2.1.4 (general): the peer failed to process the request; it may send again.
PROCESSING_FAILURE = 0x0110
#: PS3.7 C.4.2 (general): this SOP Instance UID was stored before (a warning in some services).
DUPLICATE_SOP_INSTANCE = 0x0111
#: PS3.4 Table B.2-1 (C-STORE) A7xx; also C-FIND/C-MOVE/C-GET A700.
OUT_OF_RESOURCES = 0xA700
#: PS3.4 Table C.4-2 (C-MOVE): the Move Destination is unknown to the SCP.
MOVE_DESTINATION_UNKNOWN = 0xA801
#: PS3.4 Table B.2-1 (C-STORE) A9xx: the data set does not match the SOP class.
DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: PS3.4 Table B.2-1 (C-STORE) Cxxx: the SCP cannot understand the data set.
CANNOT_UNDERSTAND = 0xC000
#: aifi's own Cxxx code: a STOW-RS instance is not of the study the request names.
STUDY_MISMATCH = 0xC409
#: PS3.4 Table C.4-2/C.4-3 (C-MOVE, C-GET) B000: sub-operations complete, one or more failed.
SUBOPERATIONS_FAILED = 0xB000
#: PS3.4 C.4.1.1.4, C.4.2.1.5: Cancel.
CANCEL = 0xFE00
#: PS3.4 C.4.1.1.4 (C-FIND), C.4.2.1.5 (C-MOVE, C-GET): matches or sub-operations continue.
PENDING = 0xFF00
#: PS3.4 C.4.1.1.4: pending, an optional key was not supported.
PENDING_WITH_WARNINGS = 0xFF01

# Unified Procedure Step (PS3.4 Annex CC): Change UPS State (CC.2.1.4, Table
# CC.2.1-2), Request UPS Cancel (CC.2.2.4, Table CC.2.2-2), Set UPS
# Information (CC.2.6.4, Table CC.2.6-1).
#: PS3.4 Table CC.2.1-2, CC.2.2-2 (warning): the UPS is already CANCELED, as requested.
UPS_ALREADY_CANCELED = 0xB304
#: PS3.4 Table CC.2.1-2 (warning): the UPS is already COMPLETED, as requested.
UPS_ALREADY_COMPLETED = 0xB306
#: PS3.4 Table CC.2.1-2, CC.2.6-1: refused, the UPS may no longer be updated (it has ended).
UPS_MAY_NO_LONGER_BE_UPDATED = 0xC300
#: PS3.4 Table CC.2.1-2, CC.2.6-1: refused, the correct Transaction UID was not provided.
UPS_WRONG_TRANSACTION_UID = 0xC301
#: PS3.4 Table CC.2.1-2: refused, the UPS is already IN PROGRESS.
UPS_ALREADY_IN_PROGRESS = 0xC302
#: PS3.4 Table CC.2.1-2: refused, a UPS becomes SCHEDULED only by N-CREATE.
UPS_SCHEDULED_ONLY_VIA_N_CREATE = 0xC303
#: PS3.4 Table CC.2.1-2: refused, the final state requirements (CC.2.1.3.1) are not met.
UPS_FINAL_STATE_REQUIREMENTS_NOT_MET = 0xC304
#: PS3.4 Table CC.2.1-2, CC.2.2-2, CC.2.6-1: no such UPS instance managed by this SCP.
UPS_NO_SUCH_INSTANCE = 0xC307
#: PS3.4 Table CC.2.1-2, CC.2.6-1: refused, the UPS is not yet IN PROGRESS.
UPS_NOT_YET_IN_PROGRESS = 0xC310
#: PS3.4 Table CC.2.2-2: refused, the UPS is already COMPLETED (a cancel comes too late).
UPS_IS_COMPLETED = 0xC311


@dataclass(frozen=True)
class Known:
    """A status aifi names: its code, the Standard's words for it, where it is defined."""

    code: int
    name: str
    where: str

    @property
    def status_class(self) -> StatusClass:
        return status_class(self.code)


#: Every status code aifi answers or looks for, by code.
STATUSES: dict[int, Known] = {
    known.code: known
    for known in (
        Known(SUCCESS, "Success", "PS3.7 C.1.1"),
        Known(PROCESSING_FAILURE, "Processing failure", "PS3.7 C.4.2.1.4"),
        Known(DUPLICATE_SOP_INSTANCE, "Duplicate SOP Instance", "PS3.7 C.4.2"),
        Known(OUT_OF_RESOURCES, "Refused: Out of Resources", "PS3.4 Table B.2-1"),
        Known(MOVE_DESTINATION_UNKNOWN, "Refused: Move Destination unknown", "PS3.4 Table C.4-2"),
        Known(DOES_NOT_MATCH_SOP_CLASS, "Error: Data Set does not match SOP Class", "PS3.4 B.2-1"),
        Known(CANNOT_UNDERSTAND, "Error: Cannot understand", "PS3.4 Table B.2-1"),
        Known(STUDY_MISMATCH, "Error: not of the study the request names", "aifi"),
        Known(
            SUBOPERATIONS_FAILED,
            "Warning: Sub-operations complete, one or more failures",
            "PS3.4 Table C.4-2",
        ),
        Known(CANCEL, "Cancel", "PS3.4 C.4.2.1.5"),
        Known(PENDING, "Pending", "PS3.4 C.4.1.1.4"),
        Known(PENDING_WITH_WARNINGS, "Pending: optional keys not supported", "PS3.4 C.4.1.1.4"),
        Known(
            UPS_ALREADY_CANCELED,
            "The UPS is already in the requested state of CANCELED",
            "PS3.4 Table CC.2.1-2",
        ),
        Known(
            UPS_ALREADY_COMPLETED,
            "The UPS is already in the requested state of COMPLETED",
            "PS3.4 Table CC.2.1-2",
        ),
        Known(
            UPS_MAY_NO_LONGER_BE_UPDATED,
            "The UPS may no longer be updated",
            "PS3.4 Table CC.2.1-2",
        ),
        Known(
            UPS_WRONG_TRANSACTION_UID,
            "The correct Transaction UID was not provided",
            "PS3.4 Table CC.2.1-2",
        ),
        Known(UPS_ALREADY_IN_PROGRESS, "The UPS is already IN PROGRESS", "PS3.4 Table CC.2.1-2"),
        Known(
            UPS_SCHEDULED_ONLY_VIA_N_CREATE,
            "The UPS may only become SCHEDULED via N-CREATE, not N-SET or N-ACTION",
            "PS3.4 Table CC.2.1-2",
        ),
        Known(
            UPS_FINAL_STATE_REQUIREMENTS_NOT_MET,
            "The UPS has not met final state requirements for the requested state change",
            "PS3.4 Table CC.2.1-2",
        ),
        Known(
            UPS_NO_SUCH_INSTANCE,
            "Specified SOP Instance UID does not exist or is not a UPS Instance managed by this"
            " SCP",
            "PS3.4 Table CC.2.1-2",
        ),
        Known(
            UPS_NOT_YET_IN_PROGRESS,
            "The UPS is not yet in the IN PROGRESS state",
            "PS3.4 Table CC.2.1-2",
        ),
        Known(UPS_IS_COMPLETED, "The UPS is already COMPLETED", "PS3.4 Table CC.2.2-2"),
    )
}


def status_class(code: int) -> StatusClass:
    """The class of a status code by the ranges of PS3.7 C.1 (any code, named here or not)."""
    if code == SUCCESS:
        return "success"
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return "warning"
    if code == CANCEL:
        return "cancel"
    if code in (PENDING, PENDING_WITH_WARNINGS):
        return "pending"
    return "failure"


def is_stored(code: int) -> bool:
    """Whether a C-STORE answered with ``code`` stored the instance (success or warning)."""
    return status_class(code) in ("success", "warning")


def is_pending(code: int) -> bool:
    """Whether ``code`` says more responses of the same request follow (PS3.7 C.1)."""
    return status_class(code) == "pending"


def describe(code: int) -> str:
    """``0xA700 (Refused: Out of Resources)``; an unnamed code with its class."""
    known = STATUSES.get(code)
    return f"0x{code:04X} ({known.name if known else status_class(code)})"


def reason(code: int) -> str:
    """``0xC301: The correct Transaction UID was not provided``: a named code and its words.

    The text a refusal or a ``Warning`` header of UPS-RS gives (PS3.18
    Table 11.7.3-2 names the UPS status codes there); an unnamed code with its class.
    """
    known = STATUSES.get(code)
    return f"0x{code:04X}: {known.name if known else status_class(code)}"


def stow_http_status(stored: int, failed: int, warned: int = 0) -> HTTPStatus:
    """The HTTP status of a STOW-RS response (PS3.18 §10.5.3, Table 10.5.3-1).

    ``stored`` counts the instances stored, ``warned`` those of them stored
    with a warning. 200 when every instance was stored without warnings, 202
    when some were stored but others failed or carry warnings, 409 when
    none was stored.
    """
    if failed and not stored:
        return HTTPStatus.CONFLICT
    if failed or warned:
        return HTTPStatus.ACCEPTED
    return HTTPStatus.OK
