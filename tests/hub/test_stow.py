"""STOW-RS in, WADO-RS out, with real DICOM files (PS3.18 §10.5, §10.4)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.models import Instance, Refusal

from .conftest import Hub, multipart, new_uid, pseudonymized, register, serving, split_multipart

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"
REFERENCED_SOP_INSTANCE_UID = "00081155"


def _count(hub: Hub, model: type[Instance] | type[Refusal]) -> int:
    engine = make_engine(hub.settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            return session.scalar(select(func.count()).select_from(model)) or 0
    finally:
        engine.dispose()


def test_stored_instances_come_back_byte_for_byte(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    study_uid, files = study
    response = hub.stow(token_a, files)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = Dataset.from_json(response.json())
    assert FAILED_SOP_SEQUENCE not in response.json()
    stored = {item.ReferencedSOPInstanceUID for item in body.ReferencedSOPSequence}
    assert stored == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert body.RetrieveURL.endswith(f"/dicomweb/studies/{study_uid}")

    for item, original in zip(body.ReferencedSOPSequence, files, strict=False):
        url = item.RetrieveURL.split("://", 1)[1].split("/", 1)[1]
        wado = hub.client.get("/" + url, headers=hub.auth(token_a))
        assert wado.status_code == 200
        assert 'type="application/dicom"' in wado.headers["content-type"]
        (part,) = split_multipart(wado.content, wado.headers["content-type"])
        expected = next(f for f in files if f.stem == item.ReferencedSOPInstanceUID)
        assert part == expected.read_bytes()
        assert original.exists()


def test_study_retrieval_returns_every_instance(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    study_uid, files = study
    hub.stow(token_a, files)

    wado = hub.client.get(f"/dicomweb/studies/{study_uid}", headers=hub.auth(token_a))

    parts = split_multipart(wado.content, wado.headers["content-type"])
    assert sorted(parts) == sorted(f.read_bytes() for f in files)


def test_instance_with_identity_is_refused_and_not_stored(
    hub: Hub, token_a: str, dicom_dir: Path
) -> None:
    identified = pseudonymized("MR_small.dcm", dicom_dir, study=new_uid(), identity_removed=False)

    response = hub.stow(token_a, [identified])

    assert response.status_code == 409
    failed = Dataset.from_json(response.json()).FailedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in failed] == [identified.stem]
    assert failed[0].FailureReason == 0x0110
    assert _count(hub, Instance) == 0
    assert _count(hub, Refusal) == 1


def test_partly_refused_request_answers_202(
    hub: Hub, token_a: str, dicom_dir: Path, study: tuple[str, list[Path]]
) -> None:
    study_uid, files = study
    identified = pseudonymized("MR_small.dcm", dicom_dir, study=study_uid, identity_removed=False)

    response = hub.stow(token_a, [files[0], identified])

    assert response.status_code == 202
    body = Dataset.from_json(response.json())
    assert [i.ReferencedSOPInstanceUID for i in body.ReferencedSOPSequence] == [files[0].stem]
    assert [i.ReferencedSOPInstanceUID for i in body.FailedSOPSequence] == [identified.stem]
    assert _count(hub, Instance) == 1


def test_resending_an_instance_is_harmless(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    _study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200

    again = hub.stow(token_a, files + files[:1])

    assert again.status_code == 200
    assert len(again.json()[REFERENCED_SOP_SEQUENCE]["Value"]) == 5
    assert _count(hub, Instance) == 4


def test_part_that_is_not_dicom_fails_with_cannot_understand(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    _study_uid, files = study
    body, content_type = multipart([files[0].read_bytes(), b"this is not DICOM" * 20])

    response = hub.client.post(
        "/dicomweb/studies",
        content=body,
        headers={**hub.auth(token_a), "Content-Type": content_type},
    )

    assert response.status_code == 202
    (failed,) = response.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [0xC000]


def test_instance_of_another_study_fails_when_the_target_names_a_study(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    _study_uid, files = study

    response = hub.stow(token_a, files[:1], study=new_uid())

    assert response.status_code == 409
    (failed,) = response.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [0xC409]
    assert _count(hub, Instance) == 0


def test_wrong_media_type_is_415(hub: Hub, token_a: str, study: tuple[str, list[Path]]) -> None:
    response = hub.client.post(
        "/dicomweb/studies",
        content=study[1][0].read_bytes(),
        headers={**hub.auth(token_a), "Content-Type": "application/dicom"},
    )
    assert response.status_code == 415
    assert "multipart/related" in response.json()["detail"]


def test_truncated_body_is_400_and_leaves_nothing_staged(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    body, content_type = multipart([f.read_bytes() for f in study[1]])

    response = hub.client.post(
        "/dicomweb/studies",
        content=body[: len(body) // 2],
        headers={**hub.auth(token_a), "Content-Type": content_type},
    )

    assert response.status_code == 400
    assert "closing boundary" in response.json()["detail"]
    assert [p for p in (hub.settings.data_dir / "tmp").rglob("*") if p.is_file()] == []
    assert _count(hub, Instance) == 0


def test_body_larger_than_the_limit_is_refused(
    tmp_path: Path, study: tuple[str, list[Path]], database_url: str | None
) -> None:
    settings = HubSettings(
        data_dir=tmp_path / "small-hub", max_upload_bytes=10_000, database_url=database_url
    )
    token = register(settings, "Hospital A")
    with serving(create_app(settings), settings) as client:
        response = Hub(client, settings).stow(token, study[1])
    assert response.status_code == 413


def test_unknown_instance_is_404(hub: Hub, token_a: str) -> None:
    response = hub.client.get(
        f"/dicomweb/studies/{new_uid()}/series/{new_uid()}/instances/{new_uid()}",
        headers=hub.auth(token_a),
    )
    assert response.status_code == 404


def test_large_instance_streamed_in_chunks_comes_back_intact(
    hub: Hub, token_a: str, dicom_dir: Path
) -> None:
    """An 8 MiB image sent with chunked transfer encoding: parts cross many parser batches."""
    path = pseudonymized("CT_small.dcm", dicom_dir, study=new_uid())
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 2048
    ds.PixelData = np.arange(2048 * 2048, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    body, content_type = multipart([path.read_bytes()])

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100_003):
            yield body[start : start + 100_003]

    response = hub.client.post(
        "/dicomweb/studies",
        content=chunks(),
        headers={**hub.auth(token_a), "Content-Type": content_type},
    )

    assert response.status_code == 200
    (item,) = Dataset.from_json(response.json()).ReferencedSOPSequence
    url = item.RetrieveURL.split("://", 1)[1].split("/", 1)[1]
    wado = hub.client.get("/" + url, headers=hub.auth(token_a))
    (part,) = split_multipart(wado.content, wado.headers["content-type"])
    assert part == path.read_bytes()
