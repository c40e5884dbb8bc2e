"""DICOM TLS (PS3.15 B.9, BCP 195) and the called AE title, against real peers.

dcmtk's ``storescu +tls`` sends to the edge's TLS listener; the edge stores
into dcmtk's ``storescp +tls``. The certificates are made by the test
(:mod:`peers.certs`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]

from aifi.demo.samples import cr_study, write_study
from aifi.edge.config import DicomPeer, ListenerSettings, TlsSettings
from aifi.edge.pacs import store_to_pacs
from aifi.edge.scp import EdgeReceiver
from aifi.edge.state import EdgeState
from peers.certs import Pki, make_pki
from peers.dcmtk import dcmtk_available, start_storescp, storescu

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk is not installed"),
]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def _receiver(tmp_path: Path, settings: ListenerSettings) -> EdgeReceiver:
    scp = EdgeReceiver(settings, EdgeState(tmp_path / "edge.db"), tmp_path / "received")
    scp.start()
    return scp


@pytest.fixture
def tls_receiver(tmp_path: Path, pki: Pki) -> Iterator[EdgeReceiver]:
    tls = TlsSettings(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca)
    scp = _receiver(tmp_path, ListenerSettings(port=0, allowed_calling_aets=["STORESCU"], tls=tls))
    yield scp
    scp.stop()


def _tls_args(pki: Pki, *, client_cert: bool = True) -> list[str]:
    mine = ["+tls", str(pki.client_key), str(pki.client_cert)] if client_cert else ["+tla"]
    return [*mine, "+cf", str(pki.ca)]


def test_storescu_over_tls_is_received(
    tls_receiver: EdgeReceiver, pki: Pki, tmp_path: Path
) -> None:
    files = write_study(cr_study(2, rows=64, columns=64), tmp_path / "study")
    result = storescu(files, "127.0.0.1", tls_receiver.port, extra_args=_tls_args(pki))
    assert result.returncode == 0, result.stderr
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert tls_receiver.state.instance(uid) is not None


def test_sender_without_a_client_certificate_is_refused(
    tls_receiver: EdgeReceiver, pki: Pki, tmp_path: Path
) -> None:
    files = write_study(cr_study(1, rows=64, columns=64), tmp_path / "study")
    result = storescu(
        files, "127.0.0.1", tls_receiver.port, extra_args=_tls_args(pki, client_cert=False)
    )
    assert result.returncode != 0
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    assert tls_receiver.state.instance(uid) is None


def test_plain_tcp_to_the_tls_listener_stores_nothing(
    tls_receiver: EdgeReceiver, tmp_path: Path
) -> None:
    files = write_study(cr_study(1, rows=64, columns=64), tmp_path / "study")
    assert storescu(files, "127.0.0.1", tls_receiver.port, timeout=30).returncode != 0
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    assert tls_receiver.state.instance(uid) is None


def test_edge_stores_into_a_tls_peer(pki: Pki, tmp_path: Path) -> None:
    datasets = [
        pydicom.dcmread(p) for p in write_study(cr_study(2, rows=64, columns=64), tmp_path / "r")
    ]
    peer_args = ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)]
    with start_storescp(tmp_path / "pacs", extra_args=peer_args) as pacs:
        tls = TlsSettings(cert=pki.client_cert, key=pki.client_key, ca_bundle=pki.ca)
        peer = DicomPeer(ae_title=pacs.aet, host="127.0.0.1", port=pacs.port, tls=tls)
        outcomes = store_to_pacs(peer, datasets)
        assert all(o.ok for o in outcomes), outcomes
        assert len(pacs.files()) == 2

        # A PACS whose certificate the edge's CA bundle does not vouch for: not stored.
        untrusted = peer.model_copy(
            update={"tls": tls.model_copy(update={"ca_bundle": pki.other_ca})}
        )
        refused = store_to_pacs(untrusted, datasets[:1])
        assert not refused[0].ok and "TLS" in refused[0].detail


def test_wrong_called_ae_title_is_rejected_and_recorded(tmp_path: Path) -> None:
    settings = ListenerSettings(port=0, allowed_calling_aets=["PACS"])  # checked by default
    assert settings.check_called_ae_title
    scp = _receiver(tmp_path, settings)
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        wrong = ae.associate("127.0.0.1", scp.port, ae_title="NOT_THE_EDGE")
        assert wrong.is_rejected
        right = ae.associate("127.0.0.1", scp.port, ae_title=settings.ae_title)
        assert right.is_established
        right.release()
        deadline = time.monotonic() + 5
        while not scp.state.events("association-refused") and time.monotonic() < deadline:
            time.sleep(0.05)
        [event] = scp.state.events("association-refused")
        assert "called AE title 'NOT_THE_EDGE'" in event["detail"]
    finally:
        scp.stop()


def test_any_called_ae_title_is_accepted_when_the_check_is_off(tmp_path: Path) -> None:
    settings = ListenerSettings(port=0, allowed_calling_aets=["PACS"], check_called_ae_title=False)
    scp = _receiver(tmp_path, settings)
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="WHATEVER")
        assert assoc.is_established
        assoc.release()
        stranger = AE(ae_title="INTRUDER")  # the calling AE title is still checked
        stranger.add_requested_context(ComputedRadiographyImageStorage)
        assert stranger.associate("127.0.0.1", scp.port, ae_title="WHATEVER").is_rejected
    finally:
        scp.stop()


def test_edge_check_reaches_a_tls_pacs(pki: Pki, tmp_path: Path) -> None:
    from aifi.edge.checks import run_checks
    from aifi.edge.config import EdgeSettings

    peer_args = ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)]
    with start_storescp(tmp_path / "pacs", extra_args=peer_args) as pacs:
        tls = TlsSettings(cert=pki.client_cert, key=pki.client_key, ca_bundle=pki.ca)
        settings = EdgeSettings(
            data_dir=tmp_path / "edge",
            pacs=DicomPeer(ae_title=pacs.aet, host="127.0.0.1", port=pacs.port, tls=tls),
        )
        [result] = [r for r in run_checks(settings) if r.name == "pacs"]
        assert result.ok, result.detail
