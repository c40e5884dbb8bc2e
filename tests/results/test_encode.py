"""All result kinds of one run, as the hub makes them: every object valid, one study, its kind.

Study: the phantom chest CT of ``conftest.py`` (synthetic), passed as
headers without pixel data as the hub's task runner passes it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)

from aifi.algorithms.base import Box, Code, Findings, ImageFinding
from aifi.results import BUILDERS, encode_results, load_standard_tables, series_numbers

from .helpers import MANIFEST, dciodvfy_errors, dcmtk, headers, probability, saved

PULMONARY_EMBOLISM = Code("59282003", "SCT", "Pulmonary embolism")


def pe_findings(sources: list[pydicom.Dataset]) -> Findings:
    return Findings(
        summary="Pulmonary embolism suspected (probability 0.91); urgent review advised",
        finding=PULMONARY_EMBOLISM,
        urgent=True,
        measurements=(probability(0.91),),
        images=(
            ImageFinding(
                sources[3].SOPInstanceUID,
                boxes=(
                    Box(90, 80, 90, 80, "suspected embolus", 0.91),
                    Box(60, 60, 80, 75, "suspected embolus", 0.6),
                ),
            ),
        ),
        demo_model=True,
    )


def test_every_kind_is_made_valid_in_the_source_study(chest_ct: list[Path], tmp_path: Path) -> None:
    sources = headers(chest_ct)

    results = encode_results(pe_findings(sources), MANIFEST, sources)

    assert [kind for kind, _ in results] == ["sr", "gsps", "sc"]
    expected_class = {
        "sr": Comprehensive3DSRStorage,
        "gsps": GrayscaleSoftcopyPresentationStateStorage,
        "sc": SecondaryCaptureImageStorage,
    }
    for kind, ds in results:
        path = saved(ds, tmp_path, kind)
        assert dciodvfy_errors(path) == [], kind
        stored = pydicom.dcmread(path)
        assert stored.SOPClassUID == expected_class[kind]
        assert stored.StudyInstanceUID == sources[0].StudyInstanceUID
        assert stored.PatientID == sources[0].PatientID
        names = {
            (e.Manufacturer, e.get("SoftwareVersions"))
            for e in stored.ContributingEquipmentSequence
        }
        assert (MANIFEST.vendor, "2.1.0") in names, kind
    assert len({ds.SeriesInstanceUID for _, ds in results}) == 3


def test_an_embolus_location_is_a_point_in_the_sr(chest_ct: list[Path], tmp_path: Path) -> None:
    sources = headers(chest_ct)
    manifest = dataclasses.replace(MANIFEST, produces=("sr",))

    ((_, sr),) = encode_results(pe_findings(sources), manifest, sources)

    path = saved(sr, tmp_path, "sr")
    dump = dcmtk("dsrdump", path)
    assert dump.returncode == 0, dump.stderr
    assert "(POINT,90/80)" in dump.stdout.replace(" ", "")
    report = hd.sr.srread(path).content
    regions = [group.roi for group in report.get_planar_roi_measurement_groups()]  # type: ignore[attr-defined]
    assert [r.graphic_type for r in regions] == [
        hd.sr.GraphicTypeValues.POINT,
        hd.sr.GraphicTypeValues.POLYLINE,
    ]
    np.testing.assert_array_equal(regions[0].value, [[90, 80]])


def test_the_builders_cover_what_hospitals_can_choose() -> None:
    assert set(BUILDERS) == {"sr", "gsps", "sc"}


def test_each_result_series_has_its_own_number_and_a_rerun_follows(
    chest_ct: list[Path],
) -> None:
    sources = headers(chest_ct)
    findings = pe_findings(sources)

    first = encode_results(findings, MANIFEST, sources)
    rerun = encode_results(findings, MANIFEST, sources, earlier_series=3)

    numbers = [int(ds.SeriesNumber) for _, ds in first]
    assert len(set(numbers)) == 3
    assert numbers == series_numbers(MANIFEST.id, count=3)
    assert not {int(ds.SeriesNumber) for _, ds in rerun} & set(numbers)
    other = series_numbers("incidental-pe", count=3)
    assert not set(other) & set(numbers)
    assert all(900000 <= n < 1000000 for n in numbers + other)


def test_standard_tables_load_once_before_any_object() -> None:
    """The algorithm process loads highdicom's IOD/module tables at start (issue 12)."""
    from highdicom import _standard_utils

    load_standard_tables()

    assert _standard_utils.get_module_attribute_map.cache_info().currsize == 1
    assert _standard_utils.get_iod_module_map.cache_info().currsize == 1
