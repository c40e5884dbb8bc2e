"""``/metrics`` scraped after real traffic and parsed with prometheus-client's own parser.

Two studies (3 + 2 instances) go from a "PACS" (pynetdicom SCU) to the edge,
one association comes from an AE title the edge does not accept; the hub
runs the integrity check, results go back into a storage SCP. The figures
must be exactly that traffic.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from status_support import edge_settings, running_hub, send, study, wait_for

from aifi.edge.config import DeliverySettings, Destination
from aifi.edge.service import EdgeService
from aifi.edge.state import DEAD_LETTER
from aifi.netutil import free_port

pytestmark = pytest.mark.slow


class StoringPacs:
    """A storage SCP that answers Success and counts what it got."""

    def __init__(self, ae_title: str = "PACS", refuse_first: int = 0) -> None:
        self.received = 0
        self.refuse = refuse_first  # answer this many C-STOREs 0xA700 (Out of Resources) first
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)  # the edge's start-up C-ECHO
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, _event: evt.Event) -> int:
        if self.refuse > 0:
            self.refuse -= 1
            return 0xA700
        self.received += 1
        return 0x0000


@pytest.fixture
def pacs() -> Iterator[StoringPacs]:
    server = StoringPacs()
    yield server
    server.server.shutdown()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url + "metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_match_the_traffic_sent(tmp_path: Path, pacs: StoringPacs) -> None:
    with running_hub(tmp_path / "hub") as (hub_url, token):
        settings = edge_settings(tmp_path / "edge", hub_url, token, pacs.port, pacs_aet="PACS")
        edge = EdgeService(settings)
        edge.start()
        try:
            assert edge.status_url is not None
            assert all(r.ok for r in send(edge, study(3)))
            assert all(r.ok for r in send(edge, study(2)))
            refused = send(edge, study(1), calling="STRANGER")
            assert not any(r.ok for r in refused)
            wait_for(
                lambda: [t.state for t in edge.state.tasks()] == ["delivered", "delivered"],
                what="both tasks delivered",
            )
            values = scrape(edge.status_url)
        finally:
            edge.stop()

    def one(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]

    assert one("aifi_edge_received_instances_total") == 5
    assert one("aifi_edge_refused_associations_total") == 1
    assert one("aifi_edge_refused_instances_total", reason="instance-refused") == 0
    assert one("aifi_edge_tasks", state="delivered") == 2
    assert one("aifi_edge_tasks", state="pending") == 0
    assert one("aifi_edge_dead_letters") == 0
    assert one("aifi_edge_retries_total", kind="delivery") == 0
    count = one("aifi_edge_turnaround_seconds_count", algorithm="integrity-check")
    assert count == 2
    total = one("aifi_edge_turnaround_seconds_sum", algorithm="integrity-check")
    assert 0 < total < 120
    buckets = [v for (n, labels), v in values.items() if n == "aifi_edge_turnaround_seconds_bucket"]
    assert buckets == sorted(buckets) and buckets[-1] == 2  # cumulative, +Inf holds all
    assert pacs.received == 2  # one SR per task
    assert one("aifi_edge_peer_up", peer="pacs") == 1
    assert one("aifi_edge_peer_up", peer="hub") == 1
    assert one("aifi_edge_peer_errors_total", peer="pacs") == 0
    assert one("aifi_edge_peer_errors_total", peer="hub") == 0
    free = shutil.disk_usage(tmp_path).free
    assert abs(one("aifi_edge_disk_free_bytes") - free) < 0.05 * free
    assert one("aifi_edge_receiving_paused") == 0


# pynetdicom's transport drops the socket of a refused connection without closing it
# (transport.py, connect): CPython closes it at once, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_metrics_per_destination_after_delivery_to_two(tmp_path: Path, pacs: StoringPacs) -> None:
    """Two studies to [pacs] and a research archive that refuses its first store; a third
    destination is down (nothing listens): parked as its own dead letter."""
    research = StoringPacs("RESEARCH", refuse_first=1)
    down_port = free_port()  # nothing listens: every association is refused
    try:
        with running_hub(tmp_path / "hub") as (hub_url, token):
            settings = edge_settings(tmp_path / "edge", hub_url, token, pacs.port, pacs_aet="PACS")
            settings = settings.model_copy(
                update={
                    "delivery": DeliverySettings(max_attempts=5, reconcile_interval_s=1.0),
                    "destinations": [
                        Destination(
                            name="research",
                            ae_title="RESEARCH",
                            host="127.0.0.1",
                            port=research.port,
                            result_kinds=["sr"],
                        ),
                        Destination(
                            name="vna",
                            ae_title="DOWN",
                            host="127.0.0.1",
                            port=down_port,
                            max_attempts=2,
                        ),
                    ],
                }
            )
            edge = EdgeService(settings)
            edge.start()
            try:
                assert edge.status_url is not None
                assert all(r.ok for r in send(edge, study(2)))
                assert all(r.ok for r in send(edge, study(1)))
                wait_for(
                    lambda: [t.state for t in edge.state.tasks()] == ["delivered", "delivered"],
                    what="both tasks delivered",
                )
                values = scrape(edge.status_url)
            finally:
                edge.stop()
    finally:
        research.server.shutdown()

    def one(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]

    assert pacs.received == 2 and research.received == 2  # one SR per task in each
    for name in ("pacs", "research"):
        assert one("aifi_edge_destination_objects_total", destination=name, status="stored") == 2
        assert one("aifi_edge_destination_tasks", destination=name, state="stored") == 2
        assert one("aifi_edge_destination_tasks", destination=name, state="retrying") == 0
        assert one("aifi_edge_destination_dead_letters_total", destination=name) == 0
        count = one(
            "aifi_edge_destination_delivery_seconds_count", destination=name, stage="stored"
        )
        assert count == 2
        total = one("aifi_edge_destination_delivery_seconds_sum", destination=name, stage="stored")
        assert 0 <= total < 60
    assert one("aifi_edge_destination_retries_total", destination="pacs") == 0
    assert one("aifi_edge_destination_retries_total", destination="research") == 1
    # the primary's results were ready before the research archive's retry had them
    research_s = one(
        "aifi_edge_destination_delivery_seconds_sum", destination="research", stage="stored"
    )
    pacs_s = one("aifi_edge_destination_delivery_seconds_sum", destination="pacs", stage="stored")
    assert research_s > pacs_s
    assert one("aifi_edge_destination_tasks", destination="vna", state=DEAD_LETTER) == 2
    assert one("aifi_edge_destination_dead_letters_total", destination="vna") == 2
    assert one("aifi_edge_destination_retries_total", destination="vna") == 2  # 1 per task
    assert one("aifi_edge_destination_objects_total", destination="vna", status="stored") == 0
    no_commitment = ("aifi_edge_destination_delivery_seconds_count", "committed")
    assert one(no_commitment[0], destination="pacs", stage=no_commitment[1]) == 0
