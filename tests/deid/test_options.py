"""Each profile option: what it keeps and what it removes (PS3.15 E.3)."""

from __future__ import annotations

import datetime as dt

from deid_support import make_instance, pseudonymize
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from aifi.deid import DeidOptions


def _codes(ds: Dataset) -> set[str]:
    return {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}


def test_basic_profile_removes_identity_and_marks_the_instance(instance: Dataset) -> None:
    out = pseudonymize(instance)
    assert out.PatientID != "PID-4711"
    assert out.PatientName.family_name == out.PatientID  # one component: the pseudonym
    assert out.PatientBirthDate == "" and out.PatientSex == ""
    assert "PatientWeight" not in out
    assert out.StudyDate == "" and "SeriesDate" not in out
    assert out.AccessionNumber not in ("", "ACC998877")
    assert "SeriesDescription" not in out
    assert not out.get("InstitutionName")
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert _codes(out) == {"113100", "113101"}
    assert out.DeidentificationMethod


def test_retain_patient_characteristics_keeps_sex_weight_and_age(instance: Dataset) -> None:
    out = pseudonymize(instance, options=DeidOptions(retain_patient_characteristics=True))
    assert out.PatientSex == "F" and out.PatientWeight == 31
    assert out.PatientAge == "012Y"  # computed: born 2012-03-10, studied 2024-05-06
    assert out.PatientBirthDate == ""
    assert "113108" in _codes(out)


def test_modified_dates_shift_every_date_by_the_same_keyed_days(instance: Dataset) -> None:
    instance.TimezoneOffsetFromUTC = "+0100"
    instance.AcquisitionDateTime = "20240506101112.5+0100"
    out = pseudonymize(instance, options=DeidOptions(retain_longitudinal_modified_dates=True))
    study = dt.datetime.strptime(out.StudyDate, "%Y%m%d").date()
    shift = (dt.date(2024, 5, 6) - study).days
    assert 365 <= shift <= 3652
    assert out.SeriesDate == out.StudyDate == out.ContentDate
    assert out.AcquisitionDateTime == out.StudyDate + "101112.5+0100"
    assert out.StudyTime == "101112"  # whole days: times of day stay
    assert out.TimezoneOffsetFromUTC == "+0100"
    assert out.PatientBirthDate == ""  # never sent, shifted or not
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in _codes(out)


def test_clean_descriptors_keeps_descriptions_without_identifying_text() -> None:
    ds = make_instance(name="Müller^Jürgen")
    ds.SeriesDescription = "Hand PA Müller 12.03.2011 ID PID-4711"
    ds.StudyDescription = "Bone age left"
    ds.ImageComments = "called 0612345678, see jurgen@example.org"
    basic = pseudonymize(ds)
    assert "SeriesDescription" not in basic and "ImageComments" not in basic
    out = pseudonymize(ds, options=DeidOptions(clean_descriptors=True))
    assert out.StudyDescription == "Bone age left"
    assert out.SeriesDescription == "Hand PA"  # only words of the descriptor vocabulary
    assert "0612345678" not in str(out.get("ImageComments", ""))
    assert "example.org" not in str(out.get("ImageComments", ""))
    assert "113105" in _codes(out)


def test_graphics_are_removed_with_or_without_clean_graphics(instance: Dataset) -> None:
    instance.add_new(0x60000010, "US", 4)  # Overlay Rows
    instance.add_new(0x60003000, "OW", b"\xff" * 2)  # Overlay Data
    instance.add_new(0x60004000, "LT", "overlay text")
    annotation = Dataset()
    text = Dataset()
    text.UnformattedTextValue = "Doe Jane"
    annotation.TextObjectSequence = Sequence([text])
    instance.GraphicAnnotationSequence = Sequence([annotation])
    for options in (DeidOptions(), DeidOptions(clean_graphics=True)):
        out = pseudonymize(instance, options=options)
        assert not any(elem.tag.group == 0x6000 for elem in out)
        annotations = out.get("GraphicAnnotationSequence") or []
        assert all("TextObjectSequence" not in item for item in annotations)
    cleaned = pseudonymize(instance, options=DeidOptions(clean_graphics=True))
    assert "GraphicAnnotationSequence" not in cleaned
    assert "113103" in _codes(cleaned)


def test_clean_pixel_data_off_is_not_marked(instance: Dataset) -> None:
    out = pseudonymize(instance, options=DeidOptions(clean_pixel_data=False))
    assert _codes(out) == {"113100"}
