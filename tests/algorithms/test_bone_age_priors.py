"""Bone age compared with the child's prior hand radiograph (the manifest asks for one prior)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from aifi.algorithms.base import Priors, PriorStudyInput
from aifi.algorithms.bone_age import BoneAge
from aifi.phantoms import bone_age_study, write_study
from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.write import as_algorithm_input


@pytest.fixture(scope="module")
def algorithm() -> BoneAge:
    return BoneAge()


def hand(folder: Path, *, age_months: int, date: dt.date | None, seed: int) -> list[Path]:
    context = StudyContext(
        patient_name="PHANTOM^HAND",
        patient_id="PH-BA-PRIOR",
        patient_sex="M",
        age_months=age_months,
        study_date=date or dt.date(2026, 1, 1),
        accession_number=f"ACC-{seed}",
        study_description="XR HAND BONE AGE",
    )
    datasets = list(bone_age_study(age_months=age_months, sex="M", seed=seed, study=context))
    if date is None:  # the pseudonymizer removed the dates
        for ds in datasets:
            ds.StudyDate = ""
    return write_study(datasets, folder)


def test_the_manifest_asks_for_the_latest_prior_of_two_years(algorithm: BoneAge) -> None:
    assert algorithm.manifest.priors == Priors(years=2.0, same_body_part=True, max_studies=1)


@pytest.mark.parametrize(
    ("dates", "interval", "source"),
    [
        ((dt.date(2026, 1, 10), dt.date(2025, 1, 10)), 12.0, "StudyDate"),
        ((None, None), 24.0, "PatientAge"),  # 011Y then 009Y: as precise as a year
    ],
)
def test_a_prior_is_read_and_compared(
    algorithm: BoneAge,
    tmp_path: Path,
    dates: tuple[dt.date | None, dt.date | None],
    interval: float,
    source: str,
) -> None:
    now = as_algorithm_input(hand(tmp_path / "now", age_months=132, date=dates[0], seed=41))
    then = as_algorithm_input(hand(tmp_path / "then", age_months=111, date=dates[1], seed=42))
    prior = PriorStudyInput(study_instance_uid=then.study_instance_uid, instances=then.instances)

    findings = algorithm.run(dataclasses.replace(now, priors=(prior,)))

    comparison = findings.details["prior"]
    assert comparison["study_instance_uid"] == then.study_instance_uid
    assert (comparison["interval_months"], comparison["interval_from"]) == (interval, source)
    change = findings.details["bone_age_months"] - comparison["bone_age_months"]
    assert comparison["bone_age_change_months"] == pytest.approx(change, abs=0.11)
    assert "Compared with the prior of" in findings.summary


def test_without_a_prior_nothing_is_compared(algorithm: BoneAge, tmp_path: Path) -> None:
    findings = algorithm.run(as_algorithm_input(hand(tmp_path, age_months=120, date=None, seed=43)))
    assert "prior" not in findings.details
    assert "Compared" not in findings.summary
