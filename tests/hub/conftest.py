"""Fixtures for the hub: a real database (SQLite, then PostgreSQL) and data folder, the real app.

Test DICOM comes from pydicom's own test files (``pydicom.data``), copied
with new UIDs and stripped to a whitelist of non-identifying attributes,
as the edge's pseudonymizer would send them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import Engine

from aifi.algorithms import registry
from aifi.algorithms.base import Algorithm, Manifest
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.hospitals import add_hospital
from aifi.hub.principals import add_principal, issue_token
from aifi.hub.server import HubServer
from aifi.netutil import free_port
from aifi.protocol.schemas import Role, TaskState
from peers.postgres import PostgresCluster, pg_dump

KEEP = {
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "Modality", "BodyPartExamined", "ImageType", "InstanceNumber", "SeriesNumber",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PixelSpacing", "RescaleIntercept",
    "RescaleSlope", "WindowCenter", "WindowWidth", "PixelData", "PlanarConfiguration",
    "NumberOfFrames", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness",
    "FrameOfReferenceUID", "PatientPosition",
}  # fmt: skip


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def pseudonymized(
    source: str,
    folder: Path,
    *,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    identity_removed: bool = True,
) -> Path:
    """A copy of pydicom test file ``source`` as the edge would send it."""
    found = get_testdata_file(source)
    assert isinstance(found, str), f"pydicom test file {source} is missing"
    original = pydicom.dcmread(found)
    ds = Dataset()
    for element in original:
        if element.keyword in KEEP:
            ds.add(element)
    ds.file_meta = FileMetaDataset()  # new, as the edge writes it: nothing of the source's
    ds.file_meta.MediaStorageSOPClassUID = original.file_meta.MediaStorageSOPClassUID
    ds.file_meta.TransferSyntaxUID = original.file_meta.TransferSyntaxUID
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = new_uid()  # every UID replaced (PS3.15 Table E.1-1: U)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or new_uid()
    ds.SOPInstanceUID = sop or new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = ""  # PS3.15 Table E.1-1: action Z
    ds.PatientID = "PSEUDQNYMQAAAAAA"  # a keyed pseudonym: 16 base32 characters
    ds.BurnedInAnnotation = "NO"
    if identity_removed:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "aifi edge, PS3.15 Basic Profile"
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        method = Dataset()
        method.CodeValue = "113100"
        method.CodingSchemeDesignator = "DCM"
        method.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = DicomSequence([method])
    else:
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "123456"  # the hospital's own identifier
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def multipart(
    parts: Sequence[bytes], *, media_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode()
        body += part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="application/dicom"; boundary={boundary}'


def split_multipart(response_body: bytes, content_type: str) -> list[bytes]:
    """The parts of a WADO-RS response (tests read it back independently of the hub)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    chunks = response_body.split(b"--" + boundary)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


@contextmanager
def serving(app: FastAPI, settings: HubSettings) -> Iterator[httpx.Client]:
    """Run ``app`` under a real uvicorn server on a free loopback port; a client for it."""
    live = settings.model_copy(update={"port": free_port()})
    with (
        HubServer(live, app) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client


class Hub:
    """A running hub app plus helpers that speak to it as an edge would."""

    def __init__(self, client: httpx.Client, settings: HubSettings) -> None:
        self.client = client
        self.settings = settings

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def stow(
        self, token: str, files: Sequence[Path], *, study: str | None = None
    ) -> httpx.Response:
        body, content_type = multipart([f.read_bytes() for f in files])
        url = f"/dicomweb/studies/{study}" if study else "/dicomweb/studies"
        return self.client.post(
            url, content=body, headers={**self.auth(token), "Content-Type": content_type}
        )

    def create_task(
        self, token: str, study: str, sops: Sequence[str], *, algorithm: str = "integrity-check",
        client_task_id: str | None = None,
    ) -> httpx.Response:  # fmt: skip
        return self.client.post(
            "/tasks",
            json={
                "client_task_id": client_task_id or uuid.uuid4().hex,
                "algorithm_id": algorithm,
                "study_instance_uid": study,
                "sop_instance_uids": list(sops),
            },
            headers=self.auth(token),
        )

    def wait_for_end(self, token: str, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task: dict[str, Any] = self.client.get(
                f"/tasks/{task_id}", headers=self.auth(token)
            ).json()
            if task["state"] in (TaskState.COMPLETED, TaskState.CANCELED):
                return task
            time.sleep(0.01)
        raise AssertionError(f"task {task_id} did not end within {timeout} s")


def register(
    settings: HubSettings, name: str, subscribe: Sequence[str] = ("integrity-check",)
) -> str:
    """Register a hospital in the hub's database, subscribed to ``subscribe``; its token."""
    engine = make_engine(settings.effective_database_url)
    try:
        migrate(engine)
        with make_sessions(engine)() as session:
            return add_hospital(session, name, subscribe=subscribe)[1]
    finally:
        engine.dispose()


def add_operator(settings: HubSettings, name: str, role: Role = Role.OPERATOR) -> str:
    """Register an operator (or auditor) directly in the hub's database; its token."""
    engine = make_engine(settings.effective_database_url)
    try:
        migrate(engine)
        with make_sessions(engine)() as session:
            principal = add_principal(session, name, role, actor="test")
            return issue_token(session, principal, actor="test")[1]
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Every hub test runs twice: on the embedded SQLite file (None) and on PostgreSQL.

    On PostgreSQL the URL is also put in ``AIFI_HUB_DATABASE_URL``, so a hub
    configuration a test writes (``aifi hub ...`` commands) reaches the same
    database as the test's settings.
    """
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_database")
    monkeypatch.setenv("AIFI_HUB_DATABASE_URL", url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new database without any schema: a SQLite file, or a PostgreSQL database.

    For tests of migrations and of what runs before them; on PostgreSQL the
    database is made for the test and dropped after it.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty-hub.sqlite'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)


def database_contents(settings: HubSettings) -> bytes:
    """What a PostgreSQL database holds, as ``pg_dump`` text; b"" on SQLite (a file in data_dir)."""
    return pg_dump(settings.database_url) if settings.database_url else b""


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> HubSettings:
    return HubSettings(data_dir=tmp_path / "hub-data", workers=2, database_url=database_url)


@pytest.fixture
def engine(settings: HubSettings) -> Iterator[Engine]:
    """An engine on the test's hub database, migrated (tests reading or writing rows directly)."""
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def test_algorithms() -> dict[str, Algorithm]:
    """Extra algorithms a test may add (by id), on top of the real registry."""
    return {}


@pytest.fixture
def resolver(test_algorithms: dict[str, Algorithm]) -> Callable[[str], Algorithm]:
    def resolve(algorithm_id: str) -> Algorithm:
        if algorithm_id in test_algorithms:
            return test_algorithms[algorithm_id]
        return registry.get(algorithm_id)

    return resolve


@pytest.fixture
def manifests(test_algorithms: dict[str, Algorithm]) -> Callable[[], list[Manifest]]:
    """The catalog the test hub starts with: the registry plus the test's algorithms."""
    return lambda: [*registry.manifests(), *(a.manifest for a in test_algorithms.values())]


@pytest.fixture
def hub(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    manifests: Callable[[], list[Manifest]],
) -> Iterator[Hub]:
    app = create_app(settings, algorithms=resolver, manifests=manifests)
    with serving(app, settings) as client:
        yield Hub(client, settings)


@pytest.fixture
def subscribed(test_algorithms: dict[str, Algorithm]) -> tuple[str, ...]:
    """What the test hospitals are subscribed to: the connection test and the test's algorithms."""
    return ("integrity-check", *test_algorithms)


@pytest.fixture
def token_a(settings: HubSettings, subscribed: tuple[str, ...]) -> str:
    return register(settings, "Hospital A", subscribed)


@pytest.fixture
def token_b(settings: HubSettings, subscribed: tuple[str, ...]) -> str:
    return register(settings, "Hospital B", subscribed)


@pytest.fixture
def operator_token(settings: HubSettings) -> str:
    return add_operator(settings, "Operator")


@pytest.fixture
def auditor_token(settings: HubSettings) -> str:
    return add_operator(settings, "Auditor", Role.AUDITOR)


@pytest.fixture
def dicom_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "edge-outbox"
    folder.mkdir()
    return folder


@pytest.fixture
def study(dicom_dir: Path) -> tuple[str, list[Path]]:
    """A pseudonymized study of four CT images in one series (pydicom's CT_small.dcm)."""
    study_uid, series_uid = new_uid(), new_uid()
    files = [
        pseudonymized("CT_small.dcm", dicom_dir, study=study_uid, series=series_uid)
        for _ in range(4)
    ]
    return study_uid, files
