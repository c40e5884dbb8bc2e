"""Data minimisation: the edge keeps what an algorithm's manifest names, and nothing else."""

from __future__ import annotations

import pytest
from deid_support import make_instance, pseudonymize
from pydicom.dataset import Dataset

from aifi.deid import Pseudonymizer
from aifi.errors import ConfigError

BONE_AGE = ("PatientSex", "PatientAge")
FRACTURE = ("BodyPartExamined", "ViewPosition", "ImageLaterality", "Laterality")
PE = ("SeriesDescription", "ContrastBolusAgent", "SliceThickness")


def test_bone_age_gets_sex_and_computed_age_never_the_birth_date(instance: Dataset) -> None:
    out = pseudonymize(instance, keep=BONE_AGE)
    assert out.PatientSex == "F"
    assert out.PatientAge == "012Y"
    assert out.PatientBirthDate == ""
    assert "PatientWeight" not in out and "BodyPartExamined" not in out


def test_age_in_months_for_infants_and_existing_age_kept() -> None:
    assert pseudonymize(make_instance(birth="20230610"), keep=BONE_AGE).PatientAge == "010M"
    ds = make_instance()
    ds.PatientAge = "011Y"
    assert pseudonymize(ds, keep=BONE_AGE).PatientAge == "011Y"


def test_very_old_ages_are_capped_at_90_years() -> None:
    assert pseudonymize(make_instance(birth="19200101"), keep=BONE_AGE).PatientAge == "090Y"
    ds = make_instance()
    ds.PatientAge = "097Y"
    assert pseudonymize(ds, keep=BONE_AGE).PatientAge == "090Y"


def test_fracture_gets_body_part_view_and_laterality(instance: Dataset) -> None:
    out = pseudonymize(instance, keep=FRACTURE)
    assert (out.BodyPartExamined, out.ViewPosition, out.ImageLaterality) == ("HAND", "PA", "L")
    assert out.PatientSex == "" and "PatientAge" not in out


def test_pe_gets_series_description_cleaned_contrast_and_thickness() -> None:
    ds = make_instance(name="Doe^Jane", modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2")
    ds.SeriesDescription = "CTA chest Doe 4711"
    ds.ContrastBolusAgent = "Iomeprol"
    ds.SliceThickness = "1.25"
    out = pseudonymize(ds, keep=PE)
    assert out.SeriesDescription == "CTA chest"
    assert out.ContrastBolusAgent == "Iomeprol"
    assert out.SliceThickness == 1.25
    assert "BodyPartExamined" not in out


def test_without_keep_none_of_them_pass(instance: Dataset) -> None:
    out = pseudonymize(instance)
    for keyword in (*FRACTURE, "SeriesDescription", "PatientAge"):
        assert keyword not in out or not out[keyword].value


@pytest.mark.parametrize(
    "keyword",
    ["PatientBirthDate", "PatientName", "OperatorsName", "NoSuch", "StudyInstanceUID", "StudyDate"],
)
def test_a_manifest_cannot_keep_identity(key: bytes, keyword: str) -> None:
    with pytest.raises(ConfigError, match=keyword):
        Pseudonymizer(key, keep=[keyword])
