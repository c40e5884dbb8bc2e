"""Delivery under faults, with real peers: nothing one task does blocks another.

The PACS is Orthanc, except where a PACS must refuse: there a pynetdicom
storage SCP on loopback that offers no presentation context for one SOP
class, or answers 0xA700 to everything for a while. (Orthanc 1.10's Lua
filters answer Success while discarding, which is worse than a refusal.)
The hub is a separate ``aifi hub serve`` process, the edge an in-process
EdgeService whose hub connection can lose answers or carry a broken result
object (an ``httpx`` transport in front of the real one).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from aifi.demo.samples import DEMO_PATIENTS, cr_study, write_study
from aifi.edge.config import (
    DeliverySettings,
    DicomPeer,
    EdgeSettings,
    HubPeer,
    ListenerSettings,
)
from aifi.edge.requeue import retry_task
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.edge.state import DEAD_LETTER
from aifi.phantoms.long_bone import fracture_study
from aifi.protocol.client import HubClient
from peers.dcmtk import storescu
from peers.orthanc import Orthanc

from .conftest import HubProcess

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]


class Faults(httpx.BaseTransport):
    """The real transport, with answers lost or result objects broken on demand."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose_acks = 0
        #: Break the result objects of the study this names (a pseudonymous
        #: Study Instance UID, asked for when the result is fetched): which of two
        #: studies' results the edge fetches first is not the test's to choose.
        self.break_results_of: Callable[[], str | None] = lambda: None
        self.broken: set[str] = set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/dicomweb/") and "/instances/" in path:
            study = self.break_results_of()
            if study is not None and f"/studies/{study}/" in path:
                self.broken.add(path)
        response = self.inner.handle_request(request)
        if path.endswith("/acknowledge") and self.lose_acks > 0:
            response.read()  # the hub committed it; the answer never arrives
            response.close()
            self.lose_acks -= 1
            raise httpx.ReadTimeout("answer lost", request=request)
        if path in self.broken:
            response.read()
            response.close()
            body = (
                b"--b\r\nContent-Type: application/dicom\r\n\r\n"
                + deep_dataset()
                + b"\r\n--b--\r\n"
            )
            return httpx.Response(
                200,
                headers={"content-type": 'multipart/related; type="application/dicom"; boundary=b'},
                content=body,
            )
        return response

    def close(self) -> None:
        self.inner.close()


def deep_dataset(depth: int = 300) -> bytes:
    """Part 10 bytes of an SR whose Content Sequence nests ``depth`` deep (undefined lengths)."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = "2.25.1"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    from io import BytesIO

    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return out.getvalue() + (sequence + item) * depth + ends * depth


class RefusingPacs:
    """A storage SCP that keeps what it accepts; it can lack one SOP class or refuse all."""

    def __init__(self, folder: Path, *, without: str | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.aet = "REFUSING"
        self.refuse_all = False
        self.ae = AE(ae_title=self.aet)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax != without:
                self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server: ThreadedAssociationServer | None = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.dicom_port = int(self.server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        if self.refuse_all:
            return 0xA700
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(self.folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000

    def held(self, sop_class_uid: str) -> int:
        return sum(
            1
            for path in self.folder.glob("*.dcm")
            if pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == sop_class_uid
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[RefusingPacs]:
    server = RefusingPacs(tmp_path / "pacs", without=GSPS)
    yield server
    server.stop()


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def edge(
    tmp_path: Path, hub: HubProcess, orthanc: Orthanc, pacs: RefusingPacs, faults: Faults
) -> Iterator[EdgeService]:
    """The edge receives from Orthanc and stores its results into ``pacs``."""
    settings = EdgeSettings(
        data_dir=tmp_path / "edge",
        quiet_period_s=0.5,
        listener=ListenerSettings(port=0, allowed_calling_aets=[orthanc.aet]),
        hub=HubPeer(
            url=hub.url,
            token=hub.add_hospital("St. Example", subscribe="integrity-check,fracture"),
            poll_interval_s=0.1,
            max_backoff_s=0.5,
        ),
        pacs=DicomPeer(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port),
        delivery=DeliverySettings(max_attempts=3, reconcile_interval_s=1.0),
        rules=[
            Rule(name="connection test", algorithm="integrity-check"),
            Rule(name="limbs", algorithm="fracture", match={"BodyPartExamined": ["FOREARM"]}),
        ],
    )
    service = EdgeService(settings)
    faulty = HubClient(settings.hub, transport=faults)
    service.deliverer.hub = faulty
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    yield service
    service.stop()
    faulty.close()


def send(orthanc: Orthanc, tmp_path: Path, datasets: list[pydicom.Dataset], name: str) -> str:
    """A modality stores the study into Orthanc, whose routing sends it to the edge."""
    files = write_study(datasets, tmp_path / name)
    done = storescu(
        files, "127.0.0.1", orthanc.dicom_port, calling_aet="MOD", called_aet=orthanc.aet
    )
    assert done.returncode == 0, done.stderr
    study_uid = str(datasets[0].StudyInstanceUID)
    orthanc.store_to("aifi", orthanc.wait_for_instances(len(files), StudyInstanceUID=study_uid))
    return study_uid


def settled(edge: EdgeService, count: int, timeout: float = 90) -> dict[str, str]:
    """Wait until ``count`` tasks exist and none is open; algorithm+study → state."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = edge.state.tasks()
        if len(tasks) >= count and all(
            t.state in ("delivered", DEAD_LETTER, "failed", "CANCELED") for t in tasks
        ):
            return {f"{t.algorithm_id}:{t.study_instance_uid}": t.state for t in tasks}
        assert time.monotonic() < deadline, [(t.algorithm_id, t.state, t.reason) for t in tasks]
        time.sleep(0.1)


def test_a_refused_sop_class_goes_to_dead_letter_and_retry_delivers_it(
    tmp_path: Path, orthanc: Orthanc, pacs: RefusingPacs, edge: EdgeService
) -> None:
    study = send(orthanc, tmp_path, list(fracture_study(fracture=True, seed=7)), "fracture")
    states = settled(edge, 2)
    assert states[f"integrity-check:{study}"] == "delivered"  # the other task went through
    (fracture,) = [t for t in edge.state.tasks() if t.algorithm_id == "fracture"]
    assert fracture.state == DEAD_LETTER
    reason = fracture.reason or ""
    assert "gave up after 3 attempts" in reason, reason
    assert "accepts none of the SOP classes offered (Grayscale Softcopy" in reason, reason
    assert pacs.held(GSPS) == 0
    assert pacs.held(COMPREHENSIVE_3D_SR) == 2  # the fracture SR and the integrity SR, once each
    assert [e for e in edge.state.task_events(fracture.id) if e["kind"] == "dead-letter"]

    # the PACS administrator adds the SOP class; the edge's operator retries
    pacs.stop()
    fixed = RefusingPacs(pacs.folder)
    edge.deliverer.pacs = DicomPeer(ae_title=fixed.aet, host="127.0.0.1", port=fixed.dicom_port)
    try:
        assert retry_task(edge.state, fracture.id[:10], by="pacs-admin") == fracture.id
        deadline = time.monotonic() + 30
        while edge.state.task(fracture.id).state != "delivered":
            assert time.monotonic() < deadline, edge.state.task(fracture.id).reason
            time.sleep(0.1)
        assert fixed.held(GSPS) == 2  # one per view
        assert fixed.held(COMPREHENSIVE_3D_SR) == 2  # not stored twice
    finally:
        fixed.stop()


def test_a_pacs_refusing_everything_for_a_while_delays_but_loses_nothing(
    tmp_path: Path, orthanc: Orthanc, pacs: RefusingPacs, edge: EdgeService
) -> None:
    pacs.refuse_all = True
    study = send(orthanc, tmp_path, cr_study(1, rows=64, columns=64), "r")
    deadline = time.monotonic() + 30
    while not edge.state.tasks() or edge.state.tasks()[0].attempts < 1:
        assert time.monotonic() < deadline, "the edge never tried the PACS"
        time.sleep(0.05)
    (task,) = edge.state.tasks()
    assert "0xA700" in (edge.state.task(task.id).reason or "")
    pacs.refuse_all = False
    states = settled(edge, 1)
    assert states == {f"integrity-check:{study}": "delivered"}
    assert pacs.held(COMPREHENSIVE_3D_SR) == 1


def test_a_broken_result_object_blocks_only_its_own_task(
    tmp_path: Path, orthanc: Orthanc, pacs: RefusingPacs, edge: EdgeService, faults: Faults
) -> None:
    first = send(orthanc, tmp_path, cr_study(1, patient=DEMO_PATIENTS[0], rows=64, columns=64), "a")
    faults.break_results_of = lambda: next(
        (t.pseudo_study_uid for t in edge.state.tasks() if t.study_instance_uid == first), None
    )
    second = send(
        orthanc, tmp_path, cr_study(1, patient=DEMO_PATIENTS[1], rows=64, columns=64), "b"
    )
    states = settled(edge, 2)
    assert states[f"integrity-check:{second}"] == "delivered"
    assert states[f"integrity-check:{first}"] == DEAD_LETTER
    (broken,) = [t for t in edge.state.tasks() if t.state == DEAD_LETTER]
    assert "cannot be read" in (broken.reason or "")
    assert pacs.held(COMPREHENSIVE_3D_SR) == 1


def test_a_lost_acknowledgement_is_settled_by_reconciliation(
    tmp_path: Path, orthanc: Orthanc, pacs: RefusingPacs, edge: EdgeService, faults: Faults
) -> None:
    faults.lose_acks = 1
    study = send(orthanc, tmp_path, cr_study(2, rows=64, columns=64), "c")
    states = settled(edge, 1, timeout=60)
    assert states == {f"integrity-check:{study}": "delivered"}
    assert faults.lose_acks == 0  # the answer really was lost once
    (task,) = edge.state.tasks()
    assert task.verified is True, task.verification  # not reset by the second pass
    assert pacs.held(COMPREHENSIVE_3D_SR) == 1
    kinds = [e["kind"] for e in edge.state.task_events(task.id)]
    assert kinds.count("task-delivered") == 1
