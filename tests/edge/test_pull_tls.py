"""Pulling a study from a query/retrieve peer over DICOM TLS (PS3.15 B.9, BCP 195).

dcmtk's ``dcmqrscp`` (Debian 3.6.7) has no TLS options, and Orthanc's TLS
needs a build with it; the peer here is a pynetdicom Query/Retrieve SCP
(Study Root C-FIND, C-GET and C-MOVE, PS3.4 C.4, C.6.2) whose listener is
wrapped in TLS with certificates the test makes (:mod:`peers.certs`). The
edge is driven as an operator would: ``aifi edge request`` with an
``edge.toml`` whose ``[[query_retrieve]]`` has a ``tls`` table (relative
paths, taken from the file's folder).
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import ThreadedAssociationServer
from typer.testing import CliRunner

from aifi.cli import app as cli
from aifi.demo.samples import cr_study
from aifi.edge.config import load_edge_settings
from aifi.edge.scp import EdgeReceiver
from aifi.edge.state import EdgeState
from peers.certs import Pki, make_pki

ACCESSION_KEYS = ("StudyInstanceUID", "AccessionNumber")


@dataclass
class TlsQrScp:
    """A Study Root Q/R SCP over TLS holding one study; C-MOVE stores to ``edge_port``."""

    aet: str
    port: int
    server: ThreadedAssociationServer
    study: list[Dataset]
    edge_port: int = 0
    tls_peers: int = 0  # associations that came over TLS

    def stop(self) -> None:
        self.server.shutdown()


def _answer(ds: Dataset, keys: Dataset) -> Dataset:
    out = Dataset()
    out.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "AccessionNumber", "PatientID", "StudyDate"):
        setattr(out, keyword, ds.get(keyword, ""))
    out.IssuerOfPatientID = ds.get("IssuerOfPatientID", "")
    out.ModalitiesInStudy = ds.Modality
    out.SOPClassesInStudy = ds.SOPClassUID
    return out


def _matches(ds: Dataset, keys: Dataset) -> bool:
    return all(not keys.get(k) or str(keys.get(k)) == str(ds.get(k, "")) for k in ACCESSION_KEYS)


def start_tls_qr_scp(pki: Pki, study: list[Dataset]) -> TlsQrScp:
    ae = AE(ae_title="TLSPACS")
    for model in (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    ):
        ae.add_supported_context(model)
    # C-GET: the instances go back as C-STOREs on the same association (SCU role).
    ae.add_supported_context(
        ComputedRadiographyImageStorage, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
    )
    ae.add_requested_context(ComputedRadiographyImageStorage)  # C-MOVE's own association
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED  # the edge must show the hospital's certificate
    holder: dict[str, TlsQrScp] = {}

    def on_open(event: Event) -> None:
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if isinstance(sock, ssl.SSLSocket):
            holder["scp"].tls_peers += 1

    def on_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        keys = event.identifier
        if keys.QueryRetrieveLevel != "STUDY":
            yield 0x0000, None
            return
        first = study[0]
        if _matches(first, keys):
            yield 0xFF00, _answer(first, keys)
        yield 0x0000, None

    def on_get(event: Event) -> Iterator[Any]:
        found = [ds for ds in study if _matches(ds, event.identifier)]
        yield len(found)
        for ds in found:
            yield 0xFF00, ds

    def on_move(event: Event) -> Iterator[Any]:
        found = [ds for ds in study if _matches(ds, event.identifier)]
        if str(event.move_destination or "").strip() != "AIFI_EDGE":
            yield None, None  # unknown move destination: 0xA801
            return
        yield "127.0.0.1", holder["scp"].edge_port
        yield len(found)
        for ds in found:
            yield 0xFF00, ds

    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        ssl_context=ctx,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, on_open),
            (evt.EVT_C_FIND, on_find),
            (evt.EVT_C_GET, on_get),
            (evt.EVT_C_MOVE, on_move),
        ],
    )
    assert server is not None
    scp = TlsQrScp("TLSPACS", int(server.server_address[1]), server, study)
    holder["scp"] = scp
    return scp


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def peer(pki: Pki) -> Iterator[TlsQrScp]:
    study = cr_study(2, rows=64, columns=64)
    for ds in study:
        ds.AccessionNumber = "ACC-TLS-1"
    scp = start_tls_qr_scp(pki, study)
    yield scp
    scp.stop()


def edge_toml(folder: Path, pki: Pki, peer: TlsQrScp, method: str, ca: Path) -> Path:
    certs = folder / "certs"
    certs.mkdir()
    for name, source in (
        ("edge.pem", pki.client_cert),
        ("edge.key", pki.client_key),
        ("hospital-ca.pem", ca),
    ):
        shutil.copy(source, certs / name)
    config = folder / "edge.toml"
    config.write_text(
        f"""
data_dir = "edge-data"

[listener]
port = 0
allowed_calling_aets = ["{peer.aet}"]
min_free_bytes = 0

[hub]
url = "http://127.0.0.1:9"
token = "x"

[status]
enabled = false

[[query_retrieve]]
name = "pacs"
ae_title = "{peer.aet}"
host = "127.0.0.1"
port = {peer.port}
method = "{method}"

[query_retrieve.tls]
cert = "certs/edge.pem"
key = "certs/edge.key"
ca_bundle = "certs/hospital-ca.pem"
""",
        encoding="utf-8",
    )
    return config


def _request(config: Path) -> Any:
    args = ["edge", "request", "--accession", "ACC-TLS-1", "--algorithm", "bone-age"]
    return CliRunner().invoke(cli, [*args, "--config", str(config)])


@pytest.mark.parametrize("method", ["get", "move"])
def test_a_study_is_found_and_retrieved_over_tls(
    tmp_path: Path, pki: Pki, peer: TlsQrScp, method: str
) -> None:
    config = edge_toml(tmp_path, pki, peer, method, pki.ca)
    settings = load_edge_settings(config)
    assert settings.query_retrieve[0].tls is not None
    receiver = None
    if method == "move":  # the peer's C-STOREs come to the edge's listener
        state = EdgeState(settings.data_dir / "edge.db")
        receiver = EdgeReceiver(settings.listener, state, settings.data_dir / "received")
        receiver.start()
        peer.edge_port = receiver.port
    try:
        result = _request(config)
    finally:
        if receiver is not None:
            receiver.stop()
    assert result.exit_code == 0, result.output
    study_uid = str(peer.study[0].StudyInstanceUID)
    assert f"requested bone-age on study {study_uid}" in result.output
    assert f"2 instances retrieved by C-{method.upper()}" in result.output
    assert peer.tls_peers >= 2  # the C-FIND and the retrieve, each over TLS
    state = EdgeState(settings.data_dir / "edge.db")
    try:
        held = {i.sop_instance_uid for i in state.instances(study_uid)}
        assert held == {str(ds.SOPInstanceUID) for ds in peer.study}
    finally:
        state.close()


def test_a_peer_the_hospitals_ca_does_not_vouch_for_is_refused(
    tmp_path: Path, pki: Pki, peer: TlsQrScp
) -> None:
    config = edge_toml(tmp_path, pki, peer, "get", pki.other_ca)
    result = _request(config)
    assert result.exit_code == 2
    assert "refused or did not answer the association from AIFI_EDGE over TLS" in " ".join(
        result.output.split()
    )
    assert peer.tls_peers == 0
