"""Bone age on phantom hand radiographs, with the shipped demo weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.algorithms.bone_age import REFERENCE_CITATION, BoneAge, age_in_months, sds
from aifi.algorithms.bone_age.reference import reference_table
from aifi.algorithms.onnx_model import DEMO_DISCLAIMER
from aifi.errors import InputNotAccepted
from aifi.phantoms import bone_age_study, fracture_study, write_study
from aifi.phantoms.write import as_algorithm_input


@pytest.fixture(scope="module")
def algorithm() -> BoneAge:
    return BoneAge()


def test_manifest_keeps_sex_and_age_not_birth_date(algorithm: BoneAge) -> None:
    keep = set(algorithm.manifest.keep_attributes)
    assert {"PatientSex", "PatientAge"} <= keep
    assert "PatientBirthDate" not in keep
    assert DEMO_DISCLAIMER in algorithm.manifest.regulatory_status


def test_reference_table_is_the_cited_greulich_pyle_table() -> None:
    table = reference_table()
    assert table.sd_at(120, "M") == pytest.approx(9.79)
    assert table.sd_at(126, "F") == pytest.approx((11.73 + 11.94) / 2)
    assert sds(130.0, 120.0, "M") == pytest.approx(10 / 9.79)


def test_each_sex_ends_where_its_published_table_ends() -> None:
    table = reference_table()
    assert table.sd_at(204, "M") == pytest.approx(13.05)
    # the published girls' table stops at 16 years: older girls get the 16-year SD
    assert table.sd_at(204, "F") == pytest.approx(7.31)
    assert table.sd_at(198, "F") == pytest.approx(7.31)
    assert table.sd_at(1, "F") == pytest.approx(0.72)
    assert "Greulich" in REFERENCE_CITATION and "Brush" in REFERENCE_CITATION


@pytest.mark.parametrize(
    ("value", "months"), [("010Y", 120.0), ("018M", 18.0), ("004W", 4 * 7 * 12 / 365.25)]
)
def test_age_strings(value: str, months: float) -> None:
    assert age_in_months(value) == pytest.approx(months)


@pytest.mark.parametrize(("age_months", "sex"), [(96, "F"), (150, "M")])
def test_bone_age_matches_a_normal_child(
    algorithm: BoneAge, tmp_path: Path, age_months: float, sex: str
) -> None:
    study = bone_age_study(age_months=age_months, sex=sex, seed=31)
    findings = algorithm.run(as_algorithm_input(write_study(study, tmp_path)))
    bone_age = findings.details["bone_age_months"]
    assert abs(bone_age - age_months) < 24
    assert findings.details["assessment"] == "normal"
    assert findings.demo_model is True and DEMO_DISCLAIMER in findings.summary
    assert findings.urgent is False
    units = {m.concept.meaning: m.unit.value for m in findings.measurements}
    assert units["Bone age"] == "mo"


def test_delayed_bone_age_gives_a_negative_sds(algorithm: BoneAge, tmp_path: Path) -> None:
    study = bone_age_study(age_months=144, sex="M", bone_age_months=60, seed=32)
    findings = algorithm.run(as_algorithm_input(write_study(study, tmp_path)))
    assert findings.details["bone_age_months"] < 110
    assert findings.details["sds"] < -2
    assert findings.details["assessment"] == "delayed"


def test_right_hand_is_mirrored(algorithm: BoneAge, tmp_path: Path) -> None:
    (ds,) = bone_age_study(age_months=100, sex="F", seed=33)
    ds.ImageLaterality = "R"
    ds.PixelData = ds.pixel_array[:, ::-1].copy().tobytes()
    findings = algorithm.run(as_algorithm_input(write_study([ds], tmp_path)))
    assert findings.details["mirrored_right_hand"] is True
    assert abs(findings.details["bone_age_months"] - 100) < 24


def test_age_25_is_refused(algorithm: BoneAge, tmp_path: Path) -> None:
    study = bone_age_study(age_months=25 * 12, sex="M", bone_age_months=200, seed=34)
    with pytest.raises(InputNotAccepted, match="outside the range 0-19 years"):
        algorithm.run(as_algorithm_input(write_study(study, tmp_path)))


@pytest.mark.parametrize("sex", ["O", ""])
def test_unknown_sex_is_refused(algorithm: BoneAge, tmp_path: Path, sex: str) -> None:
    study = bone_age_study(age_months=100, sex=sex, seed=35)
    with pytest.raises(InputNotAccepted, match="Patient's Sex must be M or F"):
        algorithm.run(as_algorithm_input(write_study(study, tmp_path)))


def test_missing_age_is_refused(algorithm: BoneAge, tmp_path: Path) -> None:
    (ds,) = bone_age_study(age_months=100, sex="F", seed=36)
    del ds.PatientAge
    with pytest.raises(InputNotAccepted, match="Patient's Age"):
        algorithm.run(as_algorithm_input(write_study([ds], tmp_path)))


def test_forearm_radiograph_is_refused(algorithm: BoneAge, tmp_path: Path) -> None:
    study = fracture_study(fracture=False, seed=37)
    with pytest.raises(InputNotAccepted, match="body part FOREARM is not HAND"):
        algorithm.run(as_algorithm_input(write_study(study, tmp_path)))
