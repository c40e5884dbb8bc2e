"""The hub's DICOMweb as a DICOMweb client sees it: QIDO-RS, WADO-RS with transfer
syntaxes, metadata, STOW-RS failure bodies (PS3.18 §10.4-§10.6).

The client is dicomweb-client (the library imaging viewers and pipelines use);
the files are pydicom-data's, pseudonymized as the edge sends them
(``conftest.pseudonymized``): CT_small.dcm (Explicit VR Little Endian),
JPEG2000.dcm (JPEG 2000) and MR_small_RLE.dcm (RLE Lossless).
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
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
)

from aifi.protocol.client import HubClient, HubPeer

from .conftest import Hub, new_uid, pseudonymized, split_multipart

BASELINE = JPEGBaseline8Bit  # pydicom has no lossy JPEG encoder: the hub cannot make it


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
    """One study with three series: CT (uncompressed, 2 images), MR in RLE, and JPEG 2000."""
    study = new_uid()
    ct_series = new_uid()
    files = {
        "ct1": pseudonymized("CT_small.dcm", dicom_dir, study=study, series=ct_series),
        "ct2": pseudonymized("CT_small.dcm", dicom_dir, study=study, series=ct_series),
        "rle": pseudonymized("MR_small_RLE.dcm", dicom_dir, study=study),
        "j2k": pseudonymized("JPEG2000.dcm", dicom_dir, study=study),
    }
    response = hub.stow(token_a, list(files.values()))
    assert response.status_code == 200, response.text
    return files


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _value(entry: dict[str, dict[str, list[object]]], tag: str) -> object:
    return entry[tag]["Value"][0]


def test_search_for_studies_series_and_instances(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    study, ct_series, ct_sop = _uids(stored["ct1"])

    (found,) = client_a.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert _value(found, "0020000D") == study
    assert found["00080061"]["Value"] == ["CT", "MR", "NM"]  # Modalities in Study
    assert _value(found, "00201206") == 3  # Number of Study Related Series
    assert _value(found, "00201208") == 4  # Number of Study Related Instances
    assert str(_value(found, "00081190")).endswith(f"/dicomweb/studies/{study}")

    series = client_a.search_for_series(study, search_filters={"Modality": "CT"})
    assert [_value(s, "0020000E") for s in series] == [ct_series]
    assert _value(series[0], "00201209") == 2

    instances = client_a.search_for_instances(study, ct_series)
    assert len(instances) == 2 and ct_sop in {_value(i, "00080018") for i in instances}
    (one,) = client_a.search_for_instances(search_filters={"SOPInstanceUID": ct_sop})
    assert _value(one, "00080016") == pydicom.dcmread(stored["ct1"]).SOPClassUID
    assert _value(one, "00280010") == 128  # Rows, read from the stored header

    assert client_a.search_for_studies(search_filters={"Modality": "US"}) == []
    assert len(client_a.search_for_instances(study, limit=3)) == 3
    assert len(client_a.search_for_instances(study, limit=3, offset=3)) == 1


def test_includefield_adds_attributes(client_a: DICOMwebClient, stored: dict[str, Path]) -> None:
    study, _, _ = _uids(stored["ct1"])

    (found,) = client_a.search_for_studies(
        search_filters={"StudyInstanceUID": study}, fields=["PatientID", "00280004"]
    )

    assert _value(found, "00100020") == "PSEUDQNYMQAAAAAA"
    assert "00280004" in found  # Photometric Interpretation by tag


def test_another_hospital_finds_nothing(
    hub: Hub, token_b: str, client_b: DICOMwebClient, stored: dict[str, Path]
) -> None:
    study, _, sop = _uids(stored["ct1"])

    assert client_b.search_for_studies() == []
    with pytest.raises(requests.HTTPError) as searched_in:
        client_b.search_for_series(study)
    assert searched_in.value.response.status_code == 404  # as for a study that is nowhere
    assert client_b.search_for_instances(search_filters={"SOPInstanceUID": sop}) == []
    with pytest.raises(requests.HTTPError) as raised:
        client_b.retrieve_study_metadata(study)
    assert raised.value.response.status_code == 404


def test_limited_and_fuzzy_searches_say_so(hub: Hub, token_a: str, stored: dict[str, Path]) -> None:
    study, _, _ = _uids(stored["ct1"])

    limited = hub.client.get(
        f"/dicomweb/studies/{study}/instances",
        params={"limit": "2", "fuzzymatching": "true"},
        headers=hub.auth(token_a),
    )

    assert len(limited.json()) == 2
    assert "more matches than limit=2" in limited.headers["warning"]
    assert "fuzzymatching is not supported" in limited.headers["warning"]
    everything = hub.client.get(
        f"/dicomweb/studies/{study}/instances", params={"limit": "4"}, headers=hub.auth(token_a)
    )
    assert len(everything.json()) == 4 and "warning" not in everything.headers


def test_unknown_query_key_is_refused(hub: Hub, token_a: str) -> None:
    response = hub.client.get(
        "/dicomweb/studies", params={"PatientFavouriteColour": "red"}, headers=hub.auth(token_a)
    )

    assert response.status_code == 400
    assert "PatientFavouriteColour" in response.json()["detail"]


def test_retrieve_as_stored(client_a: DICOMwebClient, stored: dict[str, Path]) -> None:
    study, series, sop = _uids(stored["j2k"])

    ds = client_a.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))

    assert ds.file_meta.TransferSyntaxUID == JPEG2000
    assert ds.PixelData == pydicom.dcmread(stored["j2k"]).PixelData


@pytest.mark.parametrize("name", ["j2k", "rle"])
def test_retrieve_transcoded_to_explicit_vr_little_endian(
    client_a: DICOMwebClient, stored: dict[str, Path], name: str
) -> None:
    study, series, sop = _uids(stored[name])
    original = pydicom.dcmread(stored[name])

    ds = client_a.retrieve_instance(
        study, series, sop, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )

    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPInstanceUID == sop
    np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)


def test_default_transfer_syntax_is_explicit_vr_little_endian(
    hub: Hub, token_a: str, stored: dict[str, Path]
) -> None:
    """PS3.18 §8.7.3.5.2: application/dicom without transfer-syntax is Explicit VR LE."""
    study, series, sop = _uids(stored["rle"])

    response = hub.client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={**hub.auth(token_a), "Accept": 'multipart/related; type="application/dicom"'},
    )

    assert response.status_code == 200
    assert f"transfer-syntax={ExplicitVRLittleEndian}" in response.text[:300]


@pytest.mark.parametrize("target", [JPEG2000Lossless, JPEGLSLossless])
def test_retrieve_transcoded_between_compressions(
    client_a: DICOMwebClient, stored: dict[str, Path], target: str
) -> None:
    study, series, sop = _uids(stored["rle"])
    original = pydicom.dcmread(stored["rle"])

    ds = client_a.retrieve_instance(
        study, series, sop, media_types=(("application/dicom", target),)
    )

    assert ds.file_meta.TransferSyntaxUID == target
    np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)


def test_retrieve_in_implicit_vr_little_endian(
    hub: Hub, token_a: str, stored: dict[str, Path]
) -> None:
    """dicomweb-client will not ask for Implicit VR Little Endian; a plain request does."""
    study, series, sop = _uids(stored["j2k"])
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={ImplicitVRLittleEndian}'
    )

    response = hub.client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={**hub.auth(token_a), "Accept": accept},
    )

    (part,) = split_multipart(response.content, response.headers["content-type"])
    ds = pydicom.dcmread(BytesIO(part))
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(stored["j2k"]).pixel_array)


def test_study_in_explicit_vr_little_endian_is_one_part_per_instance(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    study, _, _ = _uids(stored["ct1"])

    datasets = client_a.retrieve_study(
        study, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )

    assert len(datasets) == 4
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {ExplicitVRLittleEndian}


def test_unsupported_transfer_syntax_is_406(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    study, series, sop = _uids(stored["rle"])

    with pytest.raises(requests.HTTPError) as raised:
        client_a.retrieve_instance(
            study, series, sop, media_types=(("application/dicom", BASELINE),)
        )

    assert raised.value.response.status_code == 406
    assert ExplicitVRLittleEndian in raised.value.response.json()["detail"]


def test_metadata_has_headers_and_bulk_data_uris(
    client_a: DICOMwebClient, stored: dict[str, Path]
) -> None:
    study, series, sop = _uids(stored["j2k"])

    instance = client_a.retrieve_instance_metadata(study, series, sop)
    study_metadata = client_a.retrieve_study_metadata(study)
    series_metadata = client_a.retrieve_series_metadata(study, series)

    ds = Dataset.from_json(instance, bulk_data_uri_handler=lambda *_: b"")
    assert ds.SOPInstanceUID == sop and ds.Rows > 0
    pixel = instance["7FE00010"]
    assert "InlineBinary" not in pixel
    assert pixel["BulkDataURI"].endswith(f"/instances/{sop}/bulkdata/7FE00010")
    assert len(study_metadata) == 4 and len(series_metadata) == 1
    # dicomweb-client sends Host without the port, so the URI is taken by its path
    path = pixel["BulkDataURI"].split("/dicomweb", 1)[1]
    (pixels,) = client_a.retrieve_bulkdata(client_a.base_url + path)
    assert pixels == pydicom.dcmread(stored["j2k"]).pixel_array.tobytes()


def test_stow_failure_carries_reason_text(
    client_a: DICOMwebClient, dicom_dir: Path, stored: dict[str, Path]
) -> None:
    accepted = pydicom.dcmread(
        pseudonymized("CT_small.dcm", dicom_dir, study=new_uid()), force=True
    )
    identified = pydicom.dcmread(
        pseudonymized("CT_small.dcm", dicom_dir, study=new_uid(), identity_removed=False)
    )

    with pytest.raises(requests.HTTPError) as raised:
        client_a.store_instances([identified])
    body = Dataset.from_json(raised.value.response.json())
    partly = client_a.store_instances([accepted, identified])

    assert raised.value.response.status_code == 409
    (failed,) = body.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == identified.SOPInstanceUID
    assert failed.FailureReason == 0x0110
    assert "PatientName" in failed.TextValue or "PatientIdentityRemoved" in failed.TextValue
    assert "Doe" not in failed.TextValue and "123456" not in failed.TextValue
    assert partly.FailedSOPSequence[0].TextValue == failed.TextValue
    (referenced,) = partly.ReferencedSOPSequence
    assert referenced.RetrieveURL.endswith(f"/instances/{accepted.SOPInstanceUID}")
    assert "WarningReason" not in referenced  # nothing coerced (PS3.18 Table 10.5.3-1)


def test_pydicom_test_files_exist() -> None:
    for name in ("CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"):
        assert get_testdata_file(name) is not None


def test_the_edge_client_shows_the_reason_text(hub: Hub, token_a: str, dicom_dir: Path) -> None:
    """The edge's HubClient turns Failure Reason + Text Value into its refusal message."""
    good = pseudonymized("CT_small.dcm", dicom_dir, study=new_uid())
    identified = pseudonymized("CT_small.dcm", dicom_dir, study=new_uid(), identity_removed=False)
    client = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a))
    try:
        outcome = client.store_instances([good, identified])
    finally:
        client.close()

    assert outcome.stored == (good.stem,)
    ((sop, message),) = outcome.failed
    assert sop == identified.stem
    assert message.startswith("failure reason 272: ")  # 0x0110
    assert "PatientIdentityRemoved" in message or "PatientName" in message
