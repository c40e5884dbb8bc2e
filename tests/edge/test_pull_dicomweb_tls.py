"""A DICOMweb pull peer over HTTPS with the hospital's client certificate.

The peer is a tiny QIDO-RS / WADO-RS server (PS3.18 10.6 ``/studies``, 10.4
``/studies/{uid}``) served by uvicorn with TLS on loopback, requiring a
client certificate from the test's hospital CA (:mod:`peers.certs`). The edge
pulls a study from it with ``[[query_retrieve]] method = "dicomweb"`` and a
``tls`` table, through the same code ``aifi edge request`` runs.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from aifi.demo.samples import write_study
from aifi.dicom.multipart import content_type, dicom_files, new_boundary
from aifi.edge.config import (
    EdgeSettings,
    ListenerSettings,
    QueryRetrievePeer,
    load_edge_settings,
)
from aifi.edge.pull import peer_named, pull_study
from aifi.edge.state import EdgeState
from aifi.edge.tls import TlsSettings
from aifi.netutil import free_port
from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.hand import bone_age_study
from peers.certs import Pki, make_pki

ACCESSION = "ACC-TLS-1"
_STUDY_KEYS = ("StudyInstanceUID", "AccessionNumber", "PatientID", "StudyDate")


class TinyDicomweb:
    """QIDO-RS study search and WADO-RS study retrieve over a few Part 10 files."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.requests: list[str] = []
        self.app = FastAPI()
        self.app.get("/dicom-web/studies")(self.search)
        self.app.get("/dicom-web/studies/{study_uid}")(self.retrieve)

    def _study(self, path: Path) -> pydicom.Dataset:
        return pydicom.dcmread(path, stop_before_pixels=True)

    async def search(self, request: Request) -> Response:
        self.requests.append(str(request.url.path))
        found: dict[str, dict[str, object]] = {}
        for path in self.files:
            ds = self._study(path)
            if any(
                key in request.query_params and request.query_params[key] != str(ds.get(key, ""))
                for key in _STUDY_KEYS
            ):
                continue
            item = pydicom.Dataset()
            for key in _STUDY_KEYS:
                setattr(item, key, ds.get(key, ""))
            item.ModalitiesInStudy = ds.Modality
            found[str(ds.StudyInstanceUID)] = item.to_json_dict()
        if not found:
            return Response(status_code=204)
        return JSONResponse(list(found.values()), media_type="application/dicom+json")

    async def retrieve(self, study_uid: str, request: Request) -> Response:
        self.requests.append(str(request.url.path))
        paths = [p for p in self.files if str(self._study(p).StudyInstanceUID) == study_uid]
        boundary = new_boundary()
        return StreamingResponse(dicom_files(paths, boundary), media_type=content_type(boundary))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def study(tmp_path: Path) -> tuple[str, list[Path]]:
    context = StudyContext(
        patient_name="PHANTOM^HAND",
        patient_id="PH-TLS-1",
        patient_sex="F",
        age_months=121,
        study_date=dt.date(2026, 1, 15),
        accession_number=ACCESSION,
        study_description="XR HAND BONE AGE",
    )
    datasets = list(bone_age_study(age_months=121, sex="F", seed=3, study=context))
    return str(datasets[0].StudyInstanceUID), write_study(datasets, tmp_path / "study")


@contextmanager
def serving(
    pki: Pki, files: list[Path], host: str = "127.0.0.1"
) -> Iterator[tuple[str, TinyDicomweb]]:
    """(DICOMweb base URL, the server) over TLS, client certificates from the hospital CA."""
    server_app = TinyDicomweb(files)
    port = free_port()
    config = uvicorn.Config(
        server_app.app,
        host=host,
        port=port,
        log_config=None,
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "https peer did not start"
        time.sleep(0.05)
    try:
        yield f"https://{host}:{port}/dicom-web", server_app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def https_peer(pki: Pki, study: tuple[str, list[Path]]) -> Iterator[tuple[str, TinyDicomweb]]:
    with serving(pki, study[1]) as peer:
        yield peer


def settings_for(tmp_path: Path, url: str, tls: TlsSettings | None) -> EdgeSettings:
    return EdgeSettings(
        data_dir=tmp_path / "edge-data",
        listener=ListenerSettings(port=0, allowed_calling_aets=["PACS"], min_free_bytes=0),
        query_retrieve=[QueryRetrievePeer(name="web", method="dicomweb", url=url, tls=tls)],
    )


def test_a_study_is_pulled_over_https_with_the_hospital_client_certificate(
    tmp_path: Path, pki: Pki, https_peer: tuple[str, TinyDicomweb], study: tuple[str, list[Path]]
) -> None:
    url, server = https_peer
    tls = TlsSettings(cert=pki.client_cert, key=pki.client_key, ca_bundle=pki.ca)
    settings = settings_for(tmp_path, url, tls)
    state = EdgeState(settings.data_dir / "edge.db")
    try:
        outcome = pull_study(
            settings,
            peer_named(settings, "web"),
            accession=ACCESSION,
            algorithm_id="bone-age",
            state=state,
        )
        assert outcome.ok, outcome.detail
        assert outcome.study_instance_uid == study[0]
        assert f"{len(study[1])} instances retrieved by WADO-RS from web" in outcome.detail
        rows = state.instances(study[0])
        assert len(rows) == len(study[1])
        assert pydicom.dcmread(rows[0].path).SOPInstanceUID == rows[0].sop_instance_uid
    finally:
        state.close()
    assert server.requests == ["/dicom-web/studies", f"/dicom-web/studies/{study[0]}"]


# dicomweb-client tries a failed request five times, 2 to 16 s apart (its retry policy)
@pytest.mark.slow
def test_without_the_hospital_client_certificate_nothing_is_pulled(
    tmp_path: Path, pki: Pki, https_peer: tuple[str, TinyDicomweb]
) -> None:
    url, server = https_peer
    settings = settings_for(tmp_path, url, TlsSettings(ca_bundle=pki.ca))
    state = EdgeState(settings.data_dir / "edge.db")
    try:
        outcome = pull_study(
            settings,
            peer_named(settings, "web"),
            accession=ACCESSION,
            algorithm_id="bone-age",
            state=state,
        )
        assert outcome.status == "failed", outcome.detail
        assert f"the QIDO-RS search at {url} failed" in outcome.detail
        assert not state.events("pull-requested")
    finally:
        state.close()
    assert server.requests == []  # the handshake was refused: no request reached the peer


def test_check_hostname_false_accepts_a_peer_certificate_for_another_name(
    tmp_path: Path, pki: Pki, study: tuple[str, list[Path]]
) -> None:
    # 127.0.0.2 is loopback too, but not in the peer certificate (localhost, 127.0.0.1)
    with serving(pki, study[1], host="127.0.0.2") as (url, server):
        tls = TlsSettings(
            cert=pki.client_cert, key=pki.client_key, ca_bundle=pki.ca, check_hostname=False
        )
        settings = settings_for(tmp_path, url, tls)
        state = EdgeState(settings.data_dir / "edge.db")
        try:
            outcome = pull_study(
                settings,
                peer_named(settings, "web"),
                study_uid=study[0],
                algorithm_id="bone-age",
                state=state,
            )
        finally:
            state.close()
    assert outcome.ok, outcome.detail
    assert len(server.requests) == 2


def test_a_dicomweb_tls_table_is_read_from_edge_toml(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        '[listener]\nallowed_calling_aets = ["PACS"]\n'
        '[[query_retrieve]]\nname = "web"\nmethod = "dicomweb"\n'
        'url = "https://pacs.example/dicom-web"\n'
        '[query_retrieve.tls]\ncert = "pki/client.pem"\nkey = "pki/client.key"\n'
        'ca_bundle = "pki/ca.pem"\n'
    )
    peer = peer_named(load_edge_settings(config), "web")
    assert peer.tls is not None and peer.tls.cert == pki.client_cert
    assert peer.tls.ca_bundle == pki.ca
