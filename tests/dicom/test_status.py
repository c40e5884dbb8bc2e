"""The one status table: classes by the ranges of PS3.7 C.1, and the STOW-RS HTTP mapping.

A real Storage SCP (the demo PACS) and pynetdicom's SCU check that what the
table calls stored is what a C-STORE answers.
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

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
