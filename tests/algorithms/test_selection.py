"""Series selection: the manifest's rules executed on real headers."""

from __future__ import annotations

from collections.abc import Callable

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MediaStorageDirectoryStorage,
    MRImageStorage,
    RTPlanStorage,
    SegmentationStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from aifi.algorithms.base import InputInstance, Manifest, SelectionRule
from aifi.algorithms.selection import is_image_sop_class, select_inputs, series_matches
from aifi.errors import InputNotAccepted

CT_ONLY = (SelectionRule("Modality", any_of=("CT",)),)
RADIOGRAPHS = (SelectionRule("Modality", any_of=("CR", "DX")),)

MakeInstance = Callable[..., InputInstance]


def manifest(accepts: tuple[SelectionRule, ...], *, accepts_non_images: bool = False) -> Manifest:
    return Manifest(
        id="test-algorithm",
        version="1",
        name="Test algorithm",
        vendor="aifi tests",
        intended_use="tests",
        regulatory_status="none",
        accepts=accepts,
        accepts_non_images=accepts_non_images,
    )


@pytest.fixture
def study(make_instance: MakeInstance) -> dict[str, list]:
    """A CT series of two slices, a CR series and an SR, in one study."""
    study_uid, ct_series, cr_series, sr_series = (generate_uid() for _ in range(4))
    ct = [make_instance("CT_small.dcm", study_uid=study_uid, series_uid=ct_series) for _ in "ab"]
    cr = [
        make_instance(
            "MR_small.dcm",
            study_uid=study_uid,
            series_uid=cr_series,
            Modality="CR",
            SOPClassUID=ComputedRadiographyImageStorage,
        )
    ]
    sr = [make_instance("test-SR.dcm", study_uid=study_uid, series_uid=sr_series)]
    return {"study_uid": [study_uid], "ct": ct, "cr": cr, "sr": sr}


@pytest.mark.parametrize(
    ("sop_class_uid", "expected"),
    [
        (CTImageStorage, True),
        (MRImageStorage, True),
        (UltrasoundMultiFrameImageStorage, True),
        (ComputedRadiographyImageStorage, True),
        (ComprehensiveSRStorage, False),
        (GrayscaleSoftcopyPresentationStateStorage, False),
        (KeyObjectSelectionDocumentStorage, False),
        (SegmentationStorage, False),
        (RTPlanStorage, False),
        (EncapsulatedPDFStorage, False),
        (MediaStorageDirectoryStorage, False),
        ("1.2.826.0.1.3680043.9.9999.1", False),
    ],
)
def test_is_image_sop_class(sop_class_uid: str, expected: bool) -> None:
    assert is_image_sop_class(sop_class_uid) is expected


def test_ct_rules_keep_the_ct_series_only(study: dict[str, list]) -> None:
    instances = study["ct"] + study["cr"] + study["sr"]

    selected = select_inputs(manifest(CT_ONLY), instances)

    assert selected.study_instance_uid == study["study_uid"][0]
    assert {i.sop_instance_uid for i in selected.instances} == {
        i.sop_instance_uid for i in study["ct"]
    }


def test_radiograph_rules_keep_the_cr_series_only(study: dict[str, list]) -> None:
    selected = select_inputs(manifest(RADIOGRAPHS), study["ct"] + study["cr"] + study["sr"])

    assert [i.sop_instance_uid for i in selected.instances] == [study["cr"][0].sop_instance_uid]


def test_refusal_names_attribute_value_and_series_not_the_patient(
    study: dict[str, list],
) -> None:
    with pytest.raises(InputNotAccepted) as caught:
        select_inputs(manifest(RADIOGRAPHS), study["ct"])

    message = str(caught.value)
    assert "Modality is 'CT', expected one of CR, DX" in message
    assert study["ct"][0].series_instance_uid in message
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert str(ct.PatientName) not in message
    assert ct.PatientID not in message


def test_non_images_are_refused_by_sop_class(study: dict[str, list]) -> None:
    with pytest.raises(InputNotAccepted, match="Comprehensive SR Storage is not an image"):
        select_inputs(manifest(()), study["sr"])


def test_non_images_are_kept_when_the_manifest_accepts_them(study: dict[str, list]) -> None:
    selected = select_inputs(manifest((), accepts_non_images=True), study["sr"])

    assert [i.sop_instance_uid for i in selected.instances] == [study["sr"][0].sop_instance_uid]


def test_instances_of_two_studies_are_refused(make_instance: MakeInstance) -> None:
    instances = [
        make_instance("CT_small.dcm", study_uid=generate_uid(), series_uid=generate_uid())
        for _ in "ab"
    ]

    with pytest.raises(InputNotAccepted, match="2 studies"):
        select_inputs(manifest(CT_ONLY), instances)


def test_no_instances_are_refused() -> None:
    with pytest.raises(InputNotAccepted, match="no instances"):
        select_inputs(manifest(CT_ONLY), [])


def ct_header(**attributes: object) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_series_matches_patterns_case_insensitively() -> None:
    rules = (SelectionRule("SeriesDescription", patterns=("*thorax*", "*chest*")),)

    assert series_matches(rules, ct_header(SeriesDescription="CHEST C+ 1mm")) is None
    assert series_matches(rules, ct_header(SeriesDescription="Abdomen")) == (
        "SeriesDescription is 'Abdomen', expected matching *thorax* or *chest*"
    )


def test_series_matches_age_string_range_in_years() -> None:
    children = (SelectionRule("PatientAge", minimum=1, maximum=18),)

    assert series_matches(children, ct_header(PatientAge="012Y")) is None
    assert series_matches(children, ct_header(PatientAge="018M")) is None
    assert series_matches(children, ct_header(PatientAge="045Y")) == (
        "PatientAge is '045Y', expected within [1, 18]"
    )


def test_series_matches_any_value_of_a_multi_valued_attribute() -> None:
    rules = (SelectionRule("ImageType", any_of=("ORIGINAL",)),)

    assert series_matches(rules, ct_header(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])) is None
    assert series_matches(rules, ct_header(ImageType=["DERIVED", "SECONDARY"])) is not None


def test_missing_attribute_refuses_only_when_required() -> None:
    ds = ct_header()
    assert "BodyPartExamined" not in ds

    required = (SelectionRule("BodyPartExamined", any_of=("CHEST",)),)
    optional = (SelectionRule("BodyPartExamined", any_of=("CHEST",), required=False),)
    assert series_matches(required, ds) == "BodyPartExamined is missing"
    assert series_matches(optional, ds) is None


def test_patient_identifying_values_are_never_shown() -> None:
    rules = (SelectionRule("PatientName", patterns=("Nobody*",)),)

    reason = series_matches(rules, ct_header(PatientName="Doe^Jane"))

    assert reason is not None
    assert "Doe" not in reason


def test_unknown_keyword_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="Modalty"):
        series_matches((SelectionRule("Modalty", any_of=("CT",)),), ct_header())
