"""WADO-RS frames, rendered images and thumbnails as a DICOMweb client sees them (PS3.18 §10.4).

The client is dicomweb-client; the files are pydicom-data's, pseudonymized as
the edge sends them (``conftest.pseudonymized``): CT_small.dcm (one frame,
Explicit VR Little Endian, Rescale Intercept -1024), emri_small.dcm (10
frames, native) and emri_small_jpeg_2k_lossless.dcm (the same 10 frames in
JPEG 2000 Lossless), JPEG2000.dcm (1024 x 256), MR_small_RLE.dcm (RLE) and
SC_rgb.dcm (RGB). Rendered images are decoded with Pillow.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless

from .conftest import Hub, new_uid, pseudonymized

OCTETS = ("application/octet-stream",)


def _client(hub: Hub, token: str) -> Iterator[DICOMwebClient]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    try:
        yield DICOMwebClient(
            url=str(hub.client.base_url).rstrip("/") + "/dicomweb", session=session
        )
    finally:
        session.close()


@pytest.fixture
def client_a(hub: Hub, token_a: str) -> Iterator[DICOMwebClient]:
    yield from _client(hub, token_a)


@pytest.fixture
def client_b(hub: Hub, token_b: str) -> Iterator[DICOMwebClient]:
    yield from _client(hub, token_b)


@pytest.fixture
def stored(hub: Hub, token_a: str, dicom_dir: Path) -> dict[str, Path]:
    """One study of single- and multi-frame, native and compressed, grayscale and colour."""
    study = new_uid()
    files = {
        "ct": pseudonymized("CT_small.dcm", dicom_dir, study=study),
        "multi": pseudonymized("emri_small.dcm", dicom_dir, study=study),
        "multi_j2k": pseudonymized("emri_small_jpeg_2k_lossless.dcm", dicom_dir, study=study),
        "j2k": pseudonymized("JPEG2000.dcm", dicom_dir, study=study),
        "rle": pseudonymized("MR_small_RLE.dcm", dicom_dir, study=study),
        "rgb": pseudonymized("SC_rgb.dcm", dicom_dir, study=study),
    }
    inverted = pydicom.dcmread(pseudonymized("CT_small.dcm", dicom_dir, study=study))
    inverted.PhotometricInterpretation = "MONOCHROME1"
    files["ct_inverted"] = dicom_dir / f"{inverted.SOPInstanceUID}.dcm"
    inverted.save_as(files["ct_inverted"], enforce_file_format=True)
    response = hub.stow(token_a, list(files.values()))
    assert response.status_code == 200, response.text
    return files


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _image(data: bytes, expected_format: str) -> np.ndarray:
    image = Image.open(BytesIO(data))
    assert image.format == expected_format
    return np.asarray(image)


def test_frame_of_a_single_frame_instance(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    (frame,) = client_a.retrieve_instance_frames(*_uids(stored["ct"]), [1], media_types=OCTETS)

    assert frame == pydicom.dcmread(stored["ct"]).pixel_array.tobytes()


@pytest.mark.parametrize("name", ["multi", "multi_j2k"])
def test_frames_of_a_multi_frame_instance_as_native_octets(
    client_a: DICOMwebClient, stored: dict[str, Path], name: str
) -> None:
    """Native frames are read at their offset; JPEG 2000 frames decoded one at a time."""
    pixels = pydicom.dcmread(stored["multi"]).pixel_array  # the native original

    frames = client_a.retrieve_instance_frames(*_uids(stored[name]), [7, 2], media_types=OCTETS)

    assert frames == [pixels[6].tobytes(), pixels[1].tobytes()]


def test_frames_as_the_stored_jpeg_2000_bitstream(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    original = pydicom.dcmread(stored["multi_j2k"])
    codestreams = list(generate_frames(original.PixelData, number_of_frames=10))

    frames = client_a.retrieve_instance_frames(
        *_uids(stored["multi_j2k"]), [3, 10], media_types=(("image/jp2", JPEG2000Lossless),)
    )
    any_jp2 = client_a.retrieve_instance_frames(
        *_uids(stored["multi_j2k"]), [1], media_types=("image/jp2",)
    )
    unspecified = client_a.retrieve_instance_frames(*_uids(stored["multi_j2k"]), [1])  # */*

    assert frames == [codestreams[2], codestreams[9]]
    assert any_jp2 == [codestreams[0]]
    assert unspecified == [codestreams[0]]  # as stored
    assert frames[0].startswith(b"\xff\x4f\xff\x51")  # JPEG 2000 SOC + SIZ (ISO 15444-1)


def test_the_part_type_names_the_transfer_syntax(
    hub: Hub, token_a: str, stored: dict[str, Path]
) -> None:
    study, series, sop = _uids(stored["multi_j2k"])

    response = hub.client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers={**hub.auth(token_a), "Accept": 'multipart/related; type="image/jp2"'},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="image/jp2"')
    assert f"Content-Type: image/jp2; transfer-syntax={JPEG2000Lossless}" in response.text[:300]


@pytest.mark.parametrize("name", ["ct", "rle"])
def test_a_compressed_type_the_instance_is_not_stored_in_is_406(
    client_a: DICOMwebClient, stored: dict[str, Path], name: str
) -> None:
    with pytest.raises(requests.HTTPError) as raised:
        client_a.retrieve_instance_frames(*_uids(stored[name]), [1], media_types=("image/jp2",))

    assert raised.value.response.status_code == 406
    assert "application/octet-stream" in raised.value.response.json()["detail"]


@pytest.mark.parametrize("frames", [[11], [1, 11], [0]])
def test_a_frame_out_of_range_is_400(
    client_a: DICOMwebClient, stored: dict[str, Path], frames: list[int]
) -> None:
    with pytest.raises(requests.HTTPError) as raised:
        client_a.retrieve_instance_frames(*_uids(stored["multi"]), frames, media_types=OCTETS)

    assert raised.value.response.status_code == 400
    detail = raised.value.response.json()["detail"]
    assert "10 frame(s)" in detail if 11 in frames else "positive integer" in detail


def test_another_hospital_gets_404(
    hub: Hub, token_b: str, client_b: DICOMwebClient, stored: dict[str, Path]
) -> None:
    study, series, sop = _uids(stored["multi"])

    for call in (
        lambda: client_b.retrieve_instance_frames(study, series, sop, [1], media_types=OCTETS),
        lambda: client_b.retrieve_instance_rendered(study, series, sop, media_types=("image/png",)),
    ):
        with pytest.raises(requests.HTTPError) as raised:
            call()
        assert raised.value.response.status_code == 404
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    for path in ("/thumbnail", "/frames/1/rendered", "/frames/1/thumbnail"):
        assert hub.client.get(base + path, headers=hub.auth(token_b)).status_code == 404


@pytest.mark.parametrize(
    ("media_type", "image_format"), [("image/jpeg", "JPEG"), ("image/png", "PNG")]
)
def test_rendered_instance(
    client_a: DICOMwebClient, stored: dict[str, Path], media_type: str, image_format: str
) -> None:
    data = client_a.retrieve_instance_rendered(*_uids(stored["ct"]), media_types=(media_type,))

    assert _image(data, image_format).shape == (128, 128)


def test_the_window_moves_the_pixel_values(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    """CT_small in Hounsfield units (Rescale Intercept -1024): a lower window centre shows
    the same tissue brighter, a wider window flattens the contrast (PS3.3 C.11.2.1.2)."""
    uids = _uids(stored["ct"])

    def rendered(window: str) -> np.ndarray:
        data = client_a.retrieve_instance_rendered(
            *uids, media_types=("image/png",), params={"window": window}
        )
        return _image(data, "PNG").astype(float)

    soft, lower, wide = rendered("40,400,linear"), rendered("-200,400"), rendered("40,4000")

    assert lower.mean() > soft.mean() + 20
    assert (lower >= soft).all()
    assert wide.std() < soft.std()
    air = soft == 0  # below 40 - 200 HU
    assert air.any() and (wide[air] > 0).any()


def test_the_header_window_is_used_when_none_is_given(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    """MR_small_RLE carries Window Center 600, Width 1600: values over 1400 are white."""
    uids = _uids(stored["rle"])
    pixels = pydicom.dcmread(stored["rle"]).pixel_array

    data = client_a.retrieve_instance_rendered(*uids, media_types=("image/png",))
    shown = _image(data, "PNG")

    assert (shown[pixels >= 1400] == 255).all()
    assert (shown[pixels < 1390] < 255).all()  # 1399 and just below round to 255
    order = np.argsort(pixels, axis=None)
    assert (np.diff(shown.ravel()[order].astype(int)) >= 0).all()  # the window is monotonic


def test_monochrome1_is_inverted(client_a: DICOMwebClient, stored: dict[str, Path]) -> None:
    params = {"window": "40,400"}
    normal = client_a.retrieve_instance_rendered(
        *_uids(stored["ct"]), media_types=("image/png",), params=params
    )
    inverted = client_a.retrieve_instance_rendered(
        *_uids(stored["ct_inverted"]), media_types=("image/png",), params=params
    )

    assert (_image(inverted, "PNG") == 255 - _image(normal, "PNG")).all()


def test_rgb_is_passed_through(client_a: DICOMwebClient, stored: dict[str, Path]) -> None:
    data = client_a.retrieve_instance_rendered(*_uids(stored["rgb"]), media_types=("image/png",))

    np.testing.assert_array_equal(_image(data, "PNG"), pydicom.dcmread(stored["rgb"]).pixel_array)


def test_rendered_frame_viewport_and_quality(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    uids = _uids(stored["multi_j2k"])

    first = client_a.retrieve_instance_frames_rendered(*uids, [1], media_types=("image/png",))
    eighth = client_a.retrieve_instance_frames_rendered(*uids, [8, 2], media_types=("image/png",))
    small = client_a.retrieve_instance_frames_rendered(
        *uids, [8], media_types=("image/jpeg",), params={"viewport": "32,48", "quality": "20"}
    )
    fine = client_a.retrieve_instance_frames_rendered(
        *uids, [8], media_types=("image/jpeg",), params={"viewport": "32,48", "quality": "95"}
    )

    assert _image(first, "PNG").shape == (64, 64)
    assert (_image(first, "PNG") != _image(eighth, "PNG")).any()
    assert _image(small, "JPEG").shape == (32, 32)  # fits 32 x 48, aspect ratio kept
    assert len(small) < len(fine)


def test_thumbnail_fits_128(hub: Hub, token_a: str, stored: dict[str, Path]) -> None:
    study, series, sop = _uids(stored["j2k"])  # 1024 rows x 256 columns
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"

    thumbnail = hub.client.get(base + "/thumbnail", headers=hub.auth(token_a))
    sized = hub.client.get(
        base + "/thumbnail",
        params={"viewport": "64,64"},
        headers={**hub.auth(token_a), "Accept": "image/png"},
    )

    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert _image(thumbnail.content, "JPEG").shape == (128, 32)
    assert _image(sized.content, "PNG").shape == (64, 16)


def test_rendering_refusals(hub: Hub, token_a: str, stored: dict[str, Path]) -> None:
    study, series, sop = _uids(stored["ct"])
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    auth = hub.auth(token_a)

    gif = hub.client.get(base + "/rendered", headers={**auth, "Accept": "image/gif"})
    bad_window = hub.client.get(base + "/rendered", params={"window": "40"}, headers=auth)
    out_of_range = hub.client.get(base + "/frames/2/rendered", headers=auth)
    series_rendered = hub.client.get(
        f"/dicomweb/studies/{study}/series/{series}/rendered", headers=auth
    )

    assert gif.status_code == 406 and "image/png" in gif.json()["detail"]
    assert bad_window.status_code == 400 and "center,width" in bad_window.json()["detail"]
    assert out_of_range.status_code == 400 and "1 frame(s)" in out_of_range.json()["detail"]
    assert series_rendered.status_code == 400
