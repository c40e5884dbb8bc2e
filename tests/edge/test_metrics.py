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

from aifi.edge.service import EdgeService

pytestmark = pytest.mark.slow


class StoringPacs:
    """A storage SCP that answers Success and counts what it got."""

    def __init__(self) -> None:
        self.received = 0
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)  # the edge's start-up C-ECHO
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, _event: evt.Event) -> int:
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
