"""integrity-check on real files: every transfer syntax decodes, lossless digests agree."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from aifi.algorithms.base import AlgorithmInput, InputInstance
from aifi.algorithms.integrity_check import (
    ALGORITHM,
    MANIFEST,
    PixelSummary,
    pixel_digest,
    pixel_summary,
    pooled,
)
from aifi.errors import DicomInputError
from aifi.results.codes import DECODING_FAILURE, PIXEL_DATA_SHA256

MakeInstance = Callable[..., InputInstance]

# The same pixel values in several encodings (pydicom test files and pydicom-data).
LOSSLESS_FAMILIES = {
    "MR_small": [
        "MR_small.dcm",  # Explicit VR Little Endian
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",  # Explicit VR Big Endian: '>i2' array, same values
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
    "SC_rgb": [
        "SC_rgb.dcm",
        "SC_rgb_expb.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless, Process 14 SV1
    ],
    "emri_small (10 frames)": [
        "emri_small.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
    ],
}


def read(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


@pytest.mark.parametrize("family", sorted(LOSSLESS_FAMILIES))
def test_lossless_encodings_of_the_same_image_have_the_same_digest(family: str) -> None:
    digests = {name: pixel_digest(read(name)) for name in LOSSLESS_FAMILIES[family]}

    assert len(set(digests.values())) == 1, digests


def test_digest_is_sha256_of_the_little_endian_c_order_array() -> None:
    ds = read("MR_small_bigendian.dcm")
    array = ds.pixel_array
    canonical = array.astype(array.dtype.newbyteorder("<")).tobytes(order="C")

    assert pixel_digest(ds) == hashlib.sha256(canonical).hexdigest()


def test_one_changed_pixel_changes_the_digest() -> None:
    ds = read("CT_small.dcm")
    before = pixel_digest(ds)
    array = ds.pixel_array.copy()
    array[64, 64] += 1
    ds.PixelData = array.tobytes()

    assert pixel_digest(ds) != before


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "SC_rgb_jpeg_lossy_gdcm.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_small_odd_jpeg.dcm",
    ],
)
def test_lossy_transfer_syntaxes_decode(name: str) -> None:
    summary = pixel_summary(read(name))

    assert len(summary.sha256) == 64
    assert summary.frames >= 1


def test_statistics_of_a_multi_frame_image_cover_all_frames() -> None:
    ds = read("emri_small_jpeg_2k_lossless.dcm")
    array = ds.pixel_array.astype(np.float64)

    summary = pixel_summary(ds)

    assert (summary.rows, summary.columns, summary.frames) == (64, 64, 10)
    assert summary.minimum == array.min()
    assert summary.maximum == array.max()
    assert summary.mean == pytest.approx(array.mean())
    assert summary.standard_deviation == pytest.approx(array.std())


def test_undecodable_pixel_data_is_a_dicom_input_error() -> None:
    ds = read("CT_small.dcm")
    ds.PixelData = ds.PixelData[:100]

    with pytest.raises(DicomInputError, match="cannot be decoded"):
        pixel_digest(ds)


def test_manifest_is_a_connection_test_for_any_image() -> None:
    assert MANIFEST.id == "integrity-check"
    assert MANIFEST.accepts == ()
    assert MANIFEST.keep_attributes == ()
    assert MANIFEST.regulatory_status == "not a medical device (connection test)"
    assert MANIFEST.vendor == "aifi"


def test_run_reports_digest_and_statistics_per_image(make_instance: MakeInstance) -> None:
    study_uid = generate_uid()
    names = ["MR_small_jp2klossless.dcm", "emri_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm"]
    instances = [
        make_instance(name, study_uid=study_uid, series_uid=generate_uid()) for name in names
    ]

    findings = ALGORITHM.run(AlgorithmInput(study_uid, tuple(instances)))

    assert findings.summary == "3 images decoded, all digests computed"
    assert not findings.demo_model
    by_uid = {image.sop_instance_uid: image for image in findings.images}
    for name, instance in zip(names, instances, strict=True):
        image = by_uid[instance.sop_instance_uid]
        expected = pixel_digest(read(name))
        assert image.texts == ((PIXEL_DATA_SHA256, expected),)
        assert findings.details["digests"][instance.sop_instance_uid] == expected
        assert image.measurements == ()  # per image only the digest (issue 12: SR size)
        statistics = findings.details["statistics"][instance.sop_instance_uid]
        assert statistics["frames"] == int(read(name).get("NumberOfFrames", 1))
        assert statistics["minimum"] <= statistics["mean"] <= statistics["maximum"]
    # the images differ in size: Rows and Columns are per image only
    meanings = [m.concept.meaning for m in findings.measurements]
    assert meanings == ["Number of Frames", "Minimum", "Maximum", "Mean", "Standard Deviation"]
    assert {m.unit.scheme for m in findings.measurements} == {"UCUM"}
    frames = sum(int(read(name).get("NumberOfFrames", 1)) for name in names)
    assert findings.measurements[0].value == frames


def test_study_statistics_pool_every_pixel() -> None:
    """Mean and standard deviation of all pixels together, weighted by pixel count."""
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 4096, (8, 8)), rng.integers(100, 200, (8, 8)).repeat(2, axis=0)]
    summaries = [
        PixelSummary(
            "x", a.shape[0], a.shape[1], 1, float(a.min()), float(a.max()), a.mean(), a.std()
        )
        for a in arrays
    ]
    everything = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)

    by_meaning = {m.concept.meaning: m.value for m in pooled(summaries)}

    assert "Pixel Data Rows" not in by_meaning
    assert by_meaning["Mean"] == pytest.approx(everything.mean())
    assert by_meaning["Standard Deviation"] == pytest.approx(everything.std())
    assert by_meaning["Minimum"] == everything.min()
    assert by_meaning["Maximum"] == everything.max()
    same = {m.concept.meaning: m.value for m in pooled(summaries[:1])}
    assert (same["Pixel Data Rows"], same["Pixel Data Columns"]) == (8, 8)


def test_run_reports_an_undecodable_image_instead_of_failing(
    make_instance: MakeInstance,
) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    good = make_instance("CT_small.dcm", study_uid=study_uid, series_uid=series_uid)
    ct = read("CT_small.dcm")
    broken = make_instance(
        "CT_small.dcm", study_uid=study_uid, series_uid=series_uid, PixelData=ct.PixelData[:100]
    )

    findings = ALGORITHM.run(AlgorithmInput(study_uid, (good, broken)))

    assert findings.summary.startswith("1 of 2 images decoded; 1 could not be decoded")
    failed = next(i for i in findings.images if i.sop_instance_uid == broken.sop_instance_uid)
    assert failed.texts[0][0] == DECODING_FAILURE
    assert broken.sop_instance_uid in findings.details["failures"]
    assert list(findings.details["digests"]) == [good.sop_instance_uid]
