"""The edge long-polls the hub for its results, and polls plainly a hub that cannot.

Real peers: the hub is a separate ``aifi hub serve`` process (SQLite and
PostgreSQL), the PACS Orthanc, the edge an in-process EdgeService whose hub
connection is seen by an ``httpx`` transport in front of the real one. A
hub from before long polling refuses ``wait_s`` as an unknown filter (400,
its words); the transport plays that hub by answering so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from aifi.edge.config import DicomPeer, EdgeSettings, HubPeer, ListenerSettings
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.protocol.client import HubClient
from peers.orthanc import Orthanc

from .conftest import HUB_ON_BOTH_DATABASES, HubProcess
from .test_round_trip import send_study_through_orthanc, wait_delivered, wait_for_sr

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]


class Seen(httpx.BaseTransport):
    """The real transport; notes each ``GET /tasks`` and may play a hub without ``wait_s``."""

    def __init__(self, *, refuse_wait_s: bool = False) -> None:
        self.inner = httpx.HTTPTransport()
        self.refuse_wait_s = refuse_wait_s
        self.polls: list[tuple[bool, bool, int]] = []  # (wait_s, If-None-Match, status)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "GET" or request.url.path != "/tasks":
            return self.inner.handle_request(request)
        waits = "wait_s" in request.url.params
        if waits and self.refuse_wait_s:
            response = httpx.Response(
                400,
                json={
                    "detail": "unknown filter wait_s; GET /tasks filters on acknowledged, after,"
                    " limit, state"
                },
            )
        else:
            response = self.inner.handle_request(request)
        self.polls.append((waits, "if-none-match" in request.headers, response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()


def _edge(tmp_path: Path, hub: HubProcess, orthanc: Orthanc, seen: Seen) -> EdgeService:
    settings = EdgeSettings(
        data_dir=tmp_path / "edge",
        quiet_period_s=0.5,
        listener=ListenerSettings(port=0, allowed_calling_aets=[orthanc.aet]),
        hub=HubPeer(
            url=hub.url,
            token=hub.add_hospital("St. Example"),
            poll_interval_s=0.1,
            max_backoff_s=1.0,
            long_poll_s=5.0,
        ),
        pacs=DicomPeer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port),
        rules=[Rule(name="connection test", algorithm="integrity-check")],
    )
    service = EdgeService(settings)
    service.deliverer.hub = HubClient(settings.hub, transport=seen)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    return service


@pytest.fixture
def seen() -> Iterator[Seen]:
    transport = Seen()
    yield transport
    transport.close()


@HUB_ON_BOTH_DATABASES
def test_the_edge_long_polls_for_its_result(
    tmp_path: Path, hub: HubProcess, orthanc: Orthanc, seen: Seen
) -> None:
    edge = _edge(tmp_path, hub, orthanc, seen)
    try:
        files = send_study_through_orthanc(orthanc, tmp_path)
        study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        assert wait_for_sr(orthanc, study_uid)
        wait_delivered(edge)
    finally:
        edge.stop()
        edge.deliverer.hub.close()
    long_polls = [p for p in seen.polls if p[0] and p[1]]
    assert long_polls, seen.polls  # it waited at the hub with the listing it held
    assert all(status in (200, 304) for _w, _m, status in seen.polls)


def test_the_edge_polls_plainly_a_hub_without_long_polling(
    tmp_path: Path, hub: HubProcess, orthanc: Orthanc
) -> None:
    old_hub = Seen(refuse_wait_s=True)
    edge = _edge(tmp_path, hub, orthanc, old_hub)
    try:
        files = send_study_through_orthanc(orthanc, tmp_path)
        study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        assert wait_for_sr(orthanc, study_uid)
        wait_delivered(edge)
    finally:
        edge.stop()
        edge.deliverer.hub.close()
        old_hub.close()
    refused = [p for p in old_hub.polls if p[2] == 400]
    assert len(refused) == 1  # asked once, then plain polls
    assert all(not waits for waits, _m, status in old_hub.polls if status != 400)
    assert any(status == 200 for _w, _m, status in old_hub.polls)
