"""Routing rules as data: each rule on attributes of a real sample study."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from aifi.demo.samples import DEMO_PATIENTS, cr_study
from aifi.edge.rules import Rule, age_in_years, rule_matches
from aifi.edge.scp import ROUTING_KEYWORDS


def attrs_of(ds: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for keyword in ROUTING_KEYWORDS:
        value = getattr(ds, keyword, None)
        if value not in (None, ""):
            out[keyword] = str(value)
    return out


def test_match_by_modality_body_part_and_pattern() -> None:
    ds = cr_study(1, body_part="HAND")[0]
    ds.SeriesDescription = "Left hand PA"
    attrs = attrs_of(ds)
    assert rule_matches(
        Rule(
            algorithm="bone-age",
            match={"Modality": ["cr", "DX"], "BodyPartExamined": ["HAND"]},
            patterns={"SeriesDescription": ["*hand*"]},
        ),
        attrs,
    )
    assert not rule_matches(Rule(algorithm="x", match={"Modality": ["CT"]}), attrs)
    assert not rule_matches(Rule(algorithm="x", patterns={"SeriesDescription": ["*chest*"]}), attrs)


def test_age_range_from_patient_age_or_birth_date() -> None:
    child = DEMO_PATIENTS[1]  # born 2014
    ds = cr_study(1, patient=child, study_datetime=datetime(2026, 11, 2, 9, 0))[0]
    attrs = attrs_of(ds)
    attrs.pop("PatientAge", None)
    assert age_in_years(attrs) == pytest.approx(
        (date(2026, 11, 2) - child.birth_date).days / 365.25
    )
    assert rule_matches(Rule(algorithm="bone-age", min_age_years=0, max_age_years=19), attrs)
    assert not rule_matches(Rule(algorithm="bone-age", min_age_years=19), attrs)
    assert age_in_years({"PatientAge": "007Y"}) == 7
    assert age_in_years({"PatientAge": "018M"}) == 1.5
    assert age_in_years({}) is None
    # an age range cannot be decided without an age: the rule does not match
    assert not rule_matches(Rule(algorithm="bone-age", max_age_years=19), {"Modality": "CR"})


@pytest.mark.parametrize("modality", ["SR", "PR", "KO"])
def test_non_images_only_when_a_rule_asks(modality: str) -> None:
    attrs = {"Modality": modality}
    assert not rule_matches(Rule(algorithm="integrity-check"), attrs)
    assert rule_matches(Rule(algorithm="integrity-check", include_non_images=True), attrs)


def test_dicomdir_is_not_an_image() -> None:
    attrs = {"Modality": "OT", "SOPClassUID": "1.2.840.10008.1.3.10"}
    assert not rule_matches(Rule(algorithm="integrity-check"), attrs)
