"""Both ends of an aifi association name aifi's implementation (PS3.7 D.3.3.2)."""

from __future__ import annotations

from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]

from aifi.demo.pacs import DemoPacs
from aifi.demo.samples import cr_study
from aifi.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from aifi.edge.config import DicomPeer
from aifi.edge.pacs import store_to_pacs


def test_the_edge_storing_names_aifi_to_the_pacs(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def on_store(event: Event) -> int:
        requestor = event.assoc.requestor
        seen.append(
            (str(requestor.implementation_class_uid), requestor.implementation_version_name)
        )
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(ComputedRadiographyImageStorage)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        peer = DicomPeer(ae_title="PACS", host="127.0.0.1", port=server.server_address[1])
        results = store_to_pacs(peer, cr_study(n_images=1, rows=32, columns=32))
    finally:
        server.shutdown()
    assert [r.ok for r in results] == [True]
    assert seen == [(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)]


def test_the_demo_pacs_answers_as_aifi(tmp_path: Path) -> None:
    with DemoPacs(tmp_path / "pacs") as pacs:
        ae = AE(ae_title="MOD")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.ae_title)
        try:
            assert assoc.is_established
            acceptor = assoc.acceptor
            assert str(acceptor.implementation_class_uid) == IMPLEMENTATION_CLASS_UID
            assert acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        finally:
            assoc.release()
