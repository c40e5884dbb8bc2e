"""The one status table: classes by the ranges of PS3.7 C.1, and the STOW-RS HTTP mapping.

A real Storage SCP (the demo PACS) and pynetdicom's SCU check that what the
table calls stored is what a C-STORE answers; the UPS codes (PS3.4 Annex CC)
carry the words and class of pynetdicom's own table of them.
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import UNIFIED_PROCEDURE_STEP_SERVICE_CLASS_STATUS

from aifi.demo.pacs import DemoPacs
from aifi.demo.samples import cr_study
from aifi.dicom import status


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, "success"),
        (0x0001, "warning"),
        (0xB000, "warning"),
        (0xB007, "warning"),
        (0x0107, "warning"),
        (0x0110, "failure"),
        (0x0111, "failure"),
        (0xA700, "failure"),
        (0xA7FF, "failure"),
        (0xA801, "failure"),
        (0xA900, "failure"),
        (0xC000, "failure"),
        (0xC409, "failure"),
        (0xFE00, "cancel"),
        (0xFF00, "pending"),
        (0xFF01, "pending"),
    ],
)
def test_every_code_has_the_class_ps3_7_gives_it(code: int, expected: str) -> None:
    assert status.status_class(code) == expected
    assert status.is_stored(code) == (expected in ("success", "warning"))


def test_named_codes_are_described_with_their_names() -> None:
    assert status.describe(status.OUT_OF_RESOURCES) == "0xA700 (Refused: Out of Resources)"
    assert status.describe(0xA7A1) == "0xA7A1 (failure)"
    assert all(known.where for known in status.STATUSES.values())


UPS_CODES = [
    status.UPS_ALREADY_CANCELED,
    status.UPS_ALREADY_COMPLETED,
    status.UPS_MAY_NO_LONGER_BE_UPDATED,
    status.UPS_WRONG_TRANSACTION_UID,
    status.UPS_ALREADY_IN_PROGRESS,
    status.UPS_SCHEDULED_ONLY_VIA_N_CREATE,
    status.UPS_FINAL_STATE_REQUIREMENTS_NOT_MET,
    status.UPS_NO_SUCH_INSTANCE,
    status.UPS_NOT_YET_IN_PROGRESS,
    status.UPS_IS_COMPLETED,
]


@pytest.mark.parametrize("code", UPS_CODES, ids=lambda code: f"0x{code:04X}")
def test_ups_codes_have_annex_cc_words_and_class(code: int) -> None:
    """Names and classes as pynetdicom's own table of PS3.4 Annex CC has them."""
    pynetdicom_class, words = UNIFIED_PROCEDURE_STEP_SERVICE_CLASS_STATUS[code]
    known = status.STATUSES[code]
    assert known.name == words
    assert known.status_class == pynetdicom_class.lower()
    assert known.where.startswith("PS3.4 Table CC.2.")
    assert status.reason(code) == f"0x{code:04X}: {words}"


def test_reason_of_an_unnamed_code_gives_its_class() -> None:
    assert status.reason(0xC3FF) == "0xC3FF: failure"


def test_stow_http_status_follows_ps3_18_10_5_3() -> None:
    assert status.stow_http_status(3, 0) == HTTPStatus.OK
    assert status.stow_http_status(2, 1) == HTTPStatus.ACCEPTED
    assert status.stow_http_status(2, 0, warned=1) == HTTPStatus.ACCEPTED
    assert status.stow_http_status(0, 2) == HTTPStatus.CONFLICT


def test_a_real_c_store_success_is_stored(tmp_path: Path) -> None:
    study = cr_study(1, rows=64, columns=64)
    with DemoPacs(tmp_path / "pacs") as pacs:
        ae = AE()
        ae.add_requested_context(study[0].SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", pacs.port)
        assert assoc.is_established
        try:
            answer = assoc.send_c_store(study[0])
        finally:
            assoc.release()
    assert answer.Status == status.SUCCESS and status.is_stored(int(answer.Status))
