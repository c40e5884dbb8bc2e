"""Fixtures for the algorithm tests: small pseudonymized "studies" written from real files.

The images come from pydicom's own test files and the pydicom-data package
(``pydicom.data.get_testdata_file``): CT_small.dcm (GE CT), MR_small*.dcm
(one MR slice in several transfer syntaxes), test-SR.dcm (a Comprehensive SR).
Each test copies them into ``tmp_path`` with the study and series UIDs it
needs, as the edge's pseudonymizer would have written them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from aifi.algorithms.base import InputInstance


def write_instance(
    folder: Path, source: str, *, study_uid: str, series_uid: str, **attributes: object
) -> InputInstance:
    """Copy the pydicom test file ``source`` into ``folder`` as an instance of the given study."""
    ds = pydicom.dcmread(get_testdata_file(source))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if "SOPClassUID" in attributes:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path)
    return InputInstance(
        path=path,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        series_instance_uid=series_uid,
    )


@pytest.fixture
def make_instance(tmp_path: Path) -> Callable[..., InputInstance]:
    """``make_instance(source, study_uid=..., series_uid=..., **attributes)`` in tmp_path."""

    def make(
        source: str, *, study_uid: str, series_uid: str, **attributes: object
    ) -> InputInstance:
        return write_instance(
            tmp_path, source, study_uid=study_uid, series_uid=series_uid, **attributes
        )

    return make
