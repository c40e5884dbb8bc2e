"""Real files stay valid DICOM after pseudonymization, and their decoded pixels are identical.

Sources: pydicom's own test files (``pydicom.data``) and the ``pydicom-data``
package (``data_store``), among them JPEG 2000, JPEG lossless, JPEG-LS, RLE,
deflated and implicit VR files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
import pytest
from deid_support import KEY
from pydicom.data import get_testdata_file

from aifi.deid import Pseudonymizer, check_deidentified

PYDICOM_FILES = [
    "CT_small.dcm",  # explicit VR little endian CT
    "MR_small_implicit.dcm",  # implicit VR
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG baseline, colour
    "image_dfl.dcm",  # deflated transfer syntax
    "emri_small_jpeg_2k_lossless.dcm",  # multi-frame JPEG 2000 lossless
    "SC_rgb_rle_2frame.dcm",  # RLE, two frames
    "SC_rgb_jpeg.dcm",  # implicit VR dataset labelled explicit (tolerated)
]
_store = importlib.util.find_spec("data_store")
DATA_STORE = Path(_store.origin).parent / "data" if _store and _store.origin else None
STORE_FILES = [
    "JPEG-LL.dcm",  # JPEG lossless, process 14
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless SV1
    "MR2_J2KR.dcm",  # JPEG 2000 reversible
    "RG1_J2KI.dcm",  # JPEG 2000 irreversible, radiograph
    "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "OBXXXX1A_rle.dcm",  # RLE
]


def _sources() -> list[Path]:
    paths = [Path(get_testdata_file(name)) for name in PYDICOM_FILES]  # type: ignore[arg-type]
    if DATA_STORE is not None:
        paths += [DATA_STORE / name for name in STORE_FILES if (DATA_STORE / name).exists()]
    return paths


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
@pytest.mark.parametrize("src", _sources(), ids=lambda p: p.name)
def test_pseudonymized_file_is_valid_and_decodes_identically(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "out.dcm"
    result = Pseudonymizer(KEY, known_clean_pixels=True).pseudonymize_file(src, dst)

    before, after = pydicom.dcmread(src), pydicom.dcmread(dst)
    assert after.SOPInstanceUID == result.sop_instance_uid != before.SOPInstanceUID
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert after.StudyInstanceUID == result.study_instance_uid
    assert check_deidentified(after) == []
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        assert after[keyword].value == before[keyword].value
    assert np.array_equal(after.pixel_array, before.pixel_array)


def test_pixel_data_bytes_are_copied_verbatim(tmp_path: Path) -> None:
    src = Path(get_testdata_file("JPEG2000.dcm"))  # type: ignore[arg-type]
    Pseudonymizer(KEY, known_clean_pixels=True).pseudonymize_file(src, tmp_path / "out.dcm")
    assert pydicom.dcmread(tmp_path / "out.dcm").PixelData == pydicom.dcmread(src).PixelData


@pytest.mark.parametrize(
    "name", ["MR_small_bigendian.dcm", "rtdose_expb.dcm", "SC_rgb_small_odd_big_endian.dcm"]
)
def test_retired_big_endian_becomes_little_endian_with_identical_pixels(
    tmp_path: Path, name: str
) -> None:
    src = Path(get_testdata_file(name))  # type: ignore[arg-type]
    result = Pseudonymizer(KEY, known_clean_pixels=True).pseudonymize_file(src, tmp_path / "o.dcm")
    before, after = pydicom.dcmread(src), pydicom.dcmread(tmp_path / "o.dcm")
    assert after.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert after.SOPInstanceUID == result.sop_instance_uid
    assert check_deidentified(after) == []
    assert after.Rows == before.Rows and after.BitsAllocated == before.BitsAllocated
    assert np.array_equal(after.pixel_array, before.pixel_array)
    in_memory = Pseudonymizer(KEY, known_clean_pixels=True).pseudonymize_dataset(before)
    assert in_memory.dataset is not None
    assert np.array_equal(in_memory.dataset.pixel_array, before.pixel_array)
