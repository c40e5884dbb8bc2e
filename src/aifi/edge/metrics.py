"""The edge's ``/metrics`` in the Prometheus text format, read from its state at each scrape.

Every figure comes from ``edge.db`` (and the data folder's volume), not from
counters held in memory: a restarted edge reports the same totals, and the
figures are exactly what the status page and ``aifi edge tasks`` show.

=========================================================  =========  ============================
name                                                       type       labels
=========================================================  =========  ============================
``aifi_edge_received_instances_total``                     counter
``aifi_edge_refused_instances_total``                      counter    ``reason`` (event kind)
``aifi_edge_refused_associations_total``                   counter
``aifi_edge_tasks``                                        gauge      ``state``
``aifi_edge_turnaround_seconds``                           histogram  ``algorithm``
``aifi_edge_retries_total``                                counter    ``kind`` (delivery/operator)
``aifi_edge_dead_letters``                                 gauge
``aifi_edge_dead_letters_total``                           counter
``aifi_edge_peer_errors_total``                            counter    ``peer`` (hub/pacs/ris/fhir)
``aifi_edge_peer_up``                                      gauge      ``peer``
``aifi_edge_peer_last_success_timestamp_seconds``          gauge      ``peer``
``aifi_edge_peer_last_error_timestamp_seconds``            gauge      ``peer``
``aifi_edge_disk_free_bytes`` / ``aifi_edge_disk_total_bytes``  gauge
``aifi_edge_receiving_paused``                             gauge
=========================================================  =========  ============================

Turnaround is the time from the study's last received instance to its
results being in the PACS (the quiet period included: that is what the
radiologist waits).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aifi.edge.state import DEAD_LETTER, FINAL_STATES, OPEN_STATES, EdgeState

__all__ = [
    "CONTENT_TYPE",
    "TURNAROUND_BUCKETS",
    "EdgeCollector",
    "edge_registry",
    "peer_label",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds; from a radiograph's minute to a large CT's hour.
TURNAROUND_BUCKETS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)

# Event kinds of an instance answered with a failure status (aifi.edge.scp).
_REFUSALS = ("instance-refused", "instance-conflict", "store-failed")
_STATES = (*OPEN_STATES, "held", DEAD_LETTER, *FINAL_STATES)


def peer_label(peer: str) -> str:
    """The short label of a peer as the delivery path names it (``HL7 ORU^R01 to RIS`` → ris)."""
    if "RIS" in peer:
        return "ris"
    if "FHIR" in peer:
        return "fhir"
    return peer.lower()


class EdgeCollector(Collector):
    """Collects the edge's figures from ``state`` and the volume of ``data_dir``."""

    def __init__(self, state: EdgeState, data_dir: Path) -> None:
        self.state = state
        self.data_dir = data_dir

    def describe(  # called-by: prometheus_client's CollectorRegistry (register)
        self,
    ) -> Iterable[Metric]:
        return []  # collected fresh at every scrape, no fixed description

    def collect(  # called-by: prometheus_client's CollectorRegistry on each scrape
        self,
    ) -> Iterator[Metric]:
        events = self.state.event_counts()
        yield _counter(
            "aifi_edge_received_instances",
            "DICOM instances received and stored (C-STORE answered with success)",
            self.state.instance_count(),
        )
        refused = CounterMetricFamily(
            "aifi_edge_refused_instances",
            "C-STORE requests answered with a failure status, by cause",
            labels=["reason"],
        )
        for kind in _REFUSALS:
            refused.add_metric([kind], events.get(kind, 0))
        yield refused
        yield _counter(
            "aifi_edge_refused_associations",
            "associations refused (calling AE title not allowed)",
            events.get("association-refused", 0),
        )
        yield from self._tasks()
        retries = CounterMetricFamily(
            "aifi_edge_retries",
            "delivery attempts that failed and were scheduled again, and operators' retries",
            labels=["kind"],
        )
        retries.add_metric(["delivery"], events.get("delivery-failed", 0))
        retries.add_metric(["operator"], events.get("retry-requested", 0))
        yield retries
        yield _counter(
            "aifi_edge_dead_letters",
            "tasks that became dead letters (delivery gave up)",
            events.get("dead-letter", 0),
        )
        yield from self._peers()
        yield from self._disk()

    def _tasks(self) -> Iterator[Metric]:
        counts = self.state.state_counts()
        tasks = GaugeMetricFamily("aifi_edge_tasks", "tasks by state", labels=["state"])
        for state in dict.fromkeys((*_STATES, *counts)):
            tasks.add_metric([state], counts.get(state, 0))
        yield tasks
        waiting = GaugeMetricFamily(
            "aifi_edge_open_tasks_by_priority",
            "tasks not yet delivered or ended, by priority; the outbox sends HIGH first",
            labels=["priority"],
        )
        for name, count in self.state.open_tasks_by_priority().items():
            waiting.add_metric([name], count)
        yield waiting
        yield GaugeMetricFamily(
            "aifi_edge_dead_letters",
            "tasks waiting as dead letters for 'aifi edge retry' or 'discard'",
            value=counts.get(DEAD_LETTER, 0),
        )
        by_algorithm: dict[str, list[float]] = defaultdict(list)
        for algorithm, seconds in self.state.turnarounds():
            by_algorithm[algorithm].append(seconds)
        histogram = HistogramMetricFamily(
            "aifi_edge_turnaround_seconds",
            "seconds from a study's last received instance to its results in the PACS",
            labels=["algorithm"],
        )
        for algorithm, values in sorted(by_algorithm.items()):
            buckets = [
                (_bound(b), float(sum(1 for v in values if v <= b))) for b in TURNAROUND_BUCKETS
            ]
            buckets.append(("+Inf", float(len(values))))
            histogram.add_metric([algorithm], buckets, sum_value=sum(values))
        yield histogram

    def _peers(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "aifi_edge_peer_errors",
            "failed contacts: hub unreachable or refusing the token, PACS store attempts with"
            " an object not stored, RIS/FHIR messages not accepted",
            labels=["peer"],
        )
        up = GaugeMetricFamily(
            "aifi_edge_peer_up", "1 when the last contact with the peer succeeded", labels=["peer"]
        )
        success = GaugeMetricFamily(
            "aifi_edge_peer_last_success_timestamp_seconds",
            "time of the last successful contact (Unix seconds)",
            labels=["peer"],
        )
        error = GaugeMetricFamily(
            "aifi_edge_peer_last_error_timestamp_seconds",
            "time of the last failed contact (Unix seconds)",
            labels=["peer"],
        )
        for contact in self.state.peer_contacts():
            label = [peer_label(contact.peer)]
            errors.add_metric(label, contact.errors)
            up.add_metric(label, 1.0 if contact.up else 0.0)
            if contact.last_success_at is not None:
                success.add_metric(label, contact.last_success_at)
            if contact.last_error_at is not None:
                error.add_metric(label, contact.last_error_at)
        yield from (errors, up, success, error)

    def _disk(self) -> Iterator[Metric]:
        usage = shutil.disk_usage(self.data_dir)
        yield GaugeMetricFamily(
            "aifi_edge_disk_free_bytes",
            "free bytes on the data folder's volume",
            value=usage.free,
        )
        yield GaugeMetricFamily(
            "aifi_edge_disk_total_bytes", "size of the data folder's volume", value=usage.total
        )
        yield GaugeMetricFamily(
            "aifi_edge_receiving_paused",
            "1 while the listener answers 0xA700 for lack of disk space",
            value=1.0 if self.state.receiving_paused() else 0.0,
        )


def edge_registry(state: EdgeState, data_dir: Path) -> CollectorRegistry:
    """A registry of the edge's own (not the process-global one of prometheus-client)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EdgeCollector(state, data_dir))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the text exposition format."""
    return generate_latest(registry)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _bound(bucket: float) -> str:
    return f"{bucket:g}" if bucket != int(bucket) else f"{bucket:.1f}"
