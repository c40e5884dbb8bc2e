"""The coded content of real results, read back with highdicom's TID 1500 parser (IHE AIR).

Every shipped algorithm runs with its demo weights on a phantom study
(``conftest.algorithm_runs``); the hub's encoder makes its result objects;
each SR is read back with :func:`highdicom.sr.srread` and
:meth:`highdicom.sr.MeasurementReport` accessors, and every object is
validated with dciodvfy. A negative result is coded as well as a positive
one: the Finding with its presence Absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from aifi.results import encode_results

from .conftest import Run
from .helpers import dciodvfy_errors, saved

SCT_PRESENT, SCT_ABSENT, SCT_EQUIVOCAL = "52101004", "272519000", "42425007"

EXPECTED: dict[str, dict[str, Any]] = {
    "fracture-positive": {
        "finding_type": ("125605004", "SCT"),
        "presence": SCT_PRESENT,
        "procedure": ("24689-2", "LN"),
        "measurements": {("FXSCORE", "99AIFI")},
    },
    "fracture-negative": {
        "finding_type": ("125605004", "SCT"),
        "presence": SCT_ABSENT,
        "procedure": ("24689-2", "LN"),
        "measurements": {("FXSCORE", "99AIFI")},
    },
    "pe-positive": {
        "finding_type": ("59282003", "SCT"),
        "presence": SCT_PRESENT,
        "procedure": ("24627-2", "LN"),
        "measurements": {("122157", "DCM")},
    },
    "pe-negative": {
        "finding_type": ("59282003", "SCT"),
        "presence": SCT_ABSENT,
        "procedure": ("24627-2", "LN"),
        "measurements": {("122157", "DCM")},
    },
    "bone-age": {
        "finding_type": ("85151-9", "LN"),
        "presence": None,
        "procedure": ("37362-1", "LN"),
        "measurements": {("85151-9", "LN"), ("30525-0", "LN"), ("BASDS", "99AIFI")},
    },
    "integrity-check": {
        "finding_type": ("PIXINTEGRITY", "99AIFI"),
        "presence": None,
        "procedure": ("363679005", "SCT"),
        # study level: Number of Frames, Mean (Rows only when every image has the same)
        "measurements": {("121140", "DCM"), ("373098007", "SCT")},
    },
}


def code_of(item: pydicom.Dataset, keyword: str = "ConceptCodeSequence") -> tuple[str, str]:
    code = item[keyword][0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def child_items(ds: pydicom.Dataset, meaning: str) -> list[pydicom.Dataset]:
    return [
        item
        for item in ds.get("ContentSequence", [])
        if item.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


@pytest.fixture(scope="module")
def results(
    algorithm_runs: dict[str, Run], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[tuple[str, Path]]]:
    """Every run's result objects, as the hub stores them: (kind, written file)."""
    folder = tmp_path_factory.mktemp("coded")
    made: dict[str, list[tuple[str, Path]]] = {}
    for name, run in algorithm_runs.items():
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in run.paths]
        objects = encode_results(run.findings, run.manifest, headers)
        made[name] = [
            (kind, saved(ds, folder, f"{name}-{number}-{kind}"))
            for number, (kind, ds) in enumerate(objects)
        ]
    return made


def sr_of(results: dict[str, list[tuple[str, Path]]], name: str) -> hd.sr.Comprehensive3DSR:
    ((path,),) = [[p for kind, p in results[name] if kind == "sr"]]
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    return sr


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_measurement_group_codes_the_finding(
    name: str, results: dict[str, list[tuple[str, Path]]]
) -> None:
    expected = EXPECTED[name]
    report = sr_of(results, name).content

    groups = [*report.get_image_measurement_groups(), *report.get_planar_roi_measurement_groups()]

    assert groups
    for group in groups:
        assert group.finding_type is not None, group.tracking_identifier
        assert (group.finding_type.value, group.finding_type.scheme_designator) == expected[
            "finding_type"
        ]
    measured = {
        (m.name.value, m.name.scheme_designator) for g in groups for m in g.get_measurements()
    }
    assert expected["measurements"] <= measured


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_headline_finding_and_its_presence_are_coded_negative_too(
    name: str, results: dict[str, list[tuple[str, Path]]], algorithm_runs: dict[str, Run]
) -> None:
    expected = EXPECTED[name]
    sr = sr_of(results, name)
    root = sr.content[0]

    (procedure,) = child_items(root, "Procedure reported")
    assert code_of(procedure) == expected["procedure"]
    (container,) = child_items(root, "Qualitative Evaluations")
    (headline,) = child_items(container, "Finding")
    assert code_of(headline) == expected["finding_type"]
    presence = child_items(headline, "Presence of property")
    if expected["presence"] is None:
        assert presence == []
        return
    assert [code_of(item)[0] for item in presence] == [expected["presence"]]
    assert presence[0].RelationshipType == "HAS PROPERTIES"
    study = [
        g for g in sr.content.get_image_measurement_groups() if g.tracking_identifier == "study"
    ]
    (evaluation,) = study[0].get_qualitative_evaluations()
    assert evaluation.name.value == "121052"
    assert evaluation.value.value == expected["presence"]
    # a positive finding is also the coded finding the RIS gets; a negative is not
    finding = algorithm_runs[name].findings.finding
    assert (finding is not None) == (expected["presence"] == SCT_PRESENT)


def test_the_bone_age_is_measured_in_months_with_its_normality(
    results: dict[str, list[tuple[str, Path]]], algorithm_runs: dict[str, Run]
) -> None:
    report = sr_of(results, "bone-age").content
    (image, study) = report.get_image_measurement_groups()

    (bone_age,) = image.get_measurements(name=hd.sr.CodedConcept("85151-9", "LN", "Bone age"))
    assert bone_age.unit.value == "mo"
    assert bone_age.value == pytest.approx(
        algorithm_runs["bone-age"].findings.details["bone_age_months"]
    )
    (normality,) = image.get_qualitative_evaluations()
    assessment = algorithm_runs["bone-age"].findings.details["assessment"]
    assert normality.name.value == "121402"
    assert normality.value.value == ("17621005" if assessment == "normal" else "263654008")
    assert {m.name.value for m in study.get_measurements()} == {"85151-9", "30525-0", "BASDS"}


def test_a_fracture_image_codes_its_own_presence_and_boxes_their_finding(
    results: dict[str, list[tuple[str, Path]]],
) -> None:
    report = sr_of(results, "fracture-positive").content

    images = [g for g in report.get_image_measurement_groups() if g.source_images]
    boxes = report.get_planar_roi_measurement_groups()

    assert len(images) == 2 and boxes
    presences = {g.get_qualitative_evaluations()[0].value.value for g in images}
    assert presences <= {SCT_PRESENT, SCT_EQUIVOCAL, SCT_ABSENT} and SCT_PRESENT in presences
    for box in boxes:
        assert box.tracking_identifier.startswith("fracture ")
        assert box.finding_type.value == "125605004"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_result_object_passes_dciodvfy(
    name: str, results: dict[str, list[tuple[str, Path]]]
) -> None:
    for kind, path in results[name]:
        assert dciodvfy_errors(path) == [], (name, kind)


def test_result_series_numbers_differ_within_and_across_algorithms(
    results: dict[str, list[tuple[str, Path]]],
) -> None:
    numbers: dict[str, set[int]] = {}
    for name, objects in results.items():
        algorithm = name.split("-positive")[0].split("-negative")[0]
        series = {}
        for _, path in objects:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series.setdefault(ds.SeriesInstanceUID, set()).add(int(ds.SeriesNumber))
        assert all(len(n) == 1 for n in series.values()), name  # one number per series
        per_series = [next(iter(n)) for n in series.values()]
        assert len(set(per_series)) == len(per_series), name  # SR, GSPS, SC apart
        numbers.setdefault(algorithm, set()).update(per_series)
    algorithms = list(numbers)
    for index, first in enumerate(algorithms):
        for second in algorithms[index + 1 :]:
            assert not numbers[first] & numbers[second], (first, second)
