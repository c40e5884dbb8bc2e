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
``aifi_edge_destination_objects_total``                    counter    ``destination``, ``status``
``aifi_edge_destination_tasks``                            gauge      ``destination``, ``state``
``aifi_edge_destination_retries_total``                    counter    ``destination``
``aifi_edge_destination_dead_letters_total``               counter    ``destination``
``aifi_edge_destination_delivery_seconds``                 histogram  ``destination``, ``stage``
=========================================================  =========  ============================

Turnaround is the time from the study's last received instance to its
results being in the PACS (the quiet period included: that is what the
radiologist waits).

Per destination (``[pacs]`` and each ``[[destinations]]``, by name): result
objects ``stored`` and ``committed`` (Storage Commitment, PS3.4 Annex J);
tasks by where that destination stands (``pending``, ``retrying`` after a
failed attempt, ``committing``, ``stored``, ``committed``, ``dead-letter``);
failed attempts and dead letters; and the seconds from the results being
ready at the hub (the edge first saw the task COMPLETED) to the last object
stored there (``stage="stored"``) and to its commitment (``"committed"``).
The primary destination carries the whole task: its retries and dead
letters are the task's.
"""

from __future__ import annotations

import bisect
import shutil
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aifi.edge.config import Destination
from aifi.edge.state import DEAD_LETTER, FINAL_STATES, OPEN_STATES, EdgeState

__all__ = [
    "CONTENT_TYPE",
    "DESTINATION_STATES",
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
#: Where one destination stands for one task (aifi.edge.destinations' states, and retrying).
DESTINATION_STATES = ("pending", "retrying", "committing", "stored", "committed", DEAD_LETTER)


def peer_label(peer: str) -> str:
    """The short label of a peer as the delivery path names it (``HL7 ORU^R01 to RIS`` → ris)."""
    if "RIS" in peer:
        return "ris"
    if "FHIR" in peer:
        return "fhir"
    return peer.lower()


class EdgeCollector(Collector):
    """Collects the edge's figures from ``state`` and the volume of ``data_dir``."""

    def __init__(
        self, state: EdgeState, data_dir: Path, destinations: Sequence[Destination] = ()
    ) -> None:
        self.state = state
        self.data_dir = data_dir
        self.destinations = list(destinations)

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
        if self.destinations:
            yield from _DestinationFigures(self.state, self.destinations).metrics()

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


def edge_registry(
    state: EdgeState, data_dir: Path, destinations: Sequence[Destination] = ()
) -> CollectorRegistry:
    """A registry of the edge's own (not the process-global one of prometheus-client).

    ``destinations``: every result destination in order, the primary first
    (``EdgeSettings.result_destinations``).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EdgeCollector(state, data_dir, destinations))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the text exposition format."""
    return generate_latest(registry)


class _DestinationFigures:
    """One scrape's per-destination figures, read from the tables delivery writes.

    The primary's objects are in ``deliveries`` and its state is the task's;
    every further destination has ``destination_deliveries`` and
    ``destination_states`` (:mod:`aifi.edge.destinations`). Commitment and
    readiness times are the events ``destination-committed`` and
    ``results-ready`` (:mod:`aifi.edge.deliver`).
    """

    def __init__(self, state: EdgeState, destinations: Sequence[Destination]) -> None:
        self.state = state
        self.primary = destinations[0]
        self.others = list(destinations[1:])
        self.names = [d.name for d in destinations]

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            return list(self.state._conn().execute(sql, params).fetchall())
        except sqlite3.OperationalError:  # a table delivery has not made yet: nothing to count
            return []

    def _event_times(self, kind: str) -> dict[tuple[str, str], float]:
        """(task, destination named before the detail's colon) → first time of ``kind``."""
        found: dict[tuple[str, str], float] = {}
        for task_id, at, detail in self._rows(
            "SELECT task_id, at, detail FROM events WHERE kind=? AND task_id IS NOT NULL"
            " ORDER BY id",
            (kind,),
        ):
            found.setdefault((task_id, str(detail).split(":", 1)[0]), float(at))
        return found

    def _event_counts(self, kind: str) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for (detail,) in self._rows("SELECT detail FROM events WHERE kind=?", (kind,)):
            counts[str(detail).split(":", 1)[0]] += 1
        return counts

    def _primary_states(self, committed: dict[tuple[str, str], float]) -> dict[str, str]:
        """Task → where the primary stands, for every task whose results were ready."""
        name = self.primary.name
        requested = {
            r[0]
            for r in self._rows(
                "SELECT c.task_id FROM commitments c WHERE c.destination=? AND c.state='requested'",
                (name,),
            )
        }
        # COMPLETED with every object it was given stored: the primary has them (the
        # task waits for a further destination or the hub's acknowledgement)
        complete = {
            r[0]
            for r in self._rows(
                "SELECT task_id FROM deliveries GROUP BY task_id"
                " HAVING SUM(status='stored') = COUNT(*)"
            )
        }
        states: dict[str, str] = {}
        for task_id, state, attempts, delivered_at in self._rows(
            "SELECT id, state, attempts, delivered_at FROM tasks WHERE state IN (?,?,?)",
            ("COMPLETED", "delivered", DEAD_LETTER),
        ):
            if state == DEAD_LETTER:
                states[task_id] = DEAD_LETTER
            elif (task_id, name) in committed:
                states[task_id] = "committed"
            elif task_id in requested:
                states[task_id] = "committing"
            elif delivered_at is not None or (
                task_id in complete and not attempts and not self.primary.commitment
            ):
                states[task_id] = "stored"
            else:
                states[task_id] = "retrying" if attempts else "pending"
        return states

    def metrics(self) -> Iterator[Metric]:
        committed_at = self._event_times("destination-committed")
        ready_at = {task: at for (task, _d), at in self._event_times("results-ready").items()}
        primary = self._primary_states(committed_at)
        states: dict[tuple[str, str], str] = {(t, self.primary.name): s for t, s in primary.items()}
        for task_id, destination, state, attempts in self._rows(
            "SELECT task_id, destination, state, attempts FROM destination_states"
        ):
            retrying = state == "pending" and int(attempts) > 0
            states[(task_id, destination)] = "retrying" if retrying else state
        stored_at: dict[tuple[str, str], float] = {}
        objects: dict[tuple[str, str], int] = defaultdict(int)
        for task_id, n, last in self._rows(
            "SELECT task_id, COUNT(*), MAX(updated_at) FROM deliveries WHERE status='stored'"
            " GROUP BY task_id"
        ):
            key = (task_id, self.primary.name)
            objects[key] = int(n)
            stored_at[key] = float(last)
        for task_id, destination, n, last in self._rows(
            "SELECT task_id, destination, COUNT(*), MAX(updated_at) FROM destination_deliveries"
            " WHERE status='stored' GROUP BY task_id, destination"
        ):
            objects[(task_id, destination)] = int(n)
            stored_at[(task_id, destination)] = float(last)

        counted = CounterMetricFamily(
            "aifi_edge_destination_objects",
            "result objects stored into each destination, and of those committed"
            " (Storage Commitment, PS3.4 Annex J)",
            labels=["destination", "status"],
        )
        tasks = GaugeMetricFamily(
            "aifi_edge_destination_tasks",
            "tasks whose results were ready, by where each destination stands for them",
            labels=["destination", "state"],
        )
        by_state: dict[tuple[str, str], int] = defaultdict(int)
        for (_t, d), state in states.items():
            by_state[(d, state)] += 1
        by_status: dict[tuple[str, str], int] = defaultdict(int)
        for key, n in objects.items():
            by_status[(key[1], "stored")] += n
            if states.get(key) == "committed":
                by_status[(key[1], "committed")] += n
        for name in self.names:
            for status in ("stored", "committed"):
                counted.add_metric([name, status], by_status[(name, status)])
            for state in DESTINATION_STATES:
                tasks.add_metric([name, state], by_state[(name, state)])
        yield counted
        yield tasks

        retries = self._event_counts("destination-failed")
        retries[self.primary.name] = self.state.event_counts().get("delivery-failed", 0)
        dead = self._event_counts("destination-dead-letter")
        dead[self.primary.name] = self.state.event_counts().get("dead-letter", 0)
        retried = CounterMetricFamily(
            "aifi_edge_destination_retries",
            "failed attempts to store into (or have committed by) a destination, each retried"
            " after a back-off; for the primary, the task's failed delivery attempts",
            labels=["destination"],
        )
        parked = CounterMetricFamily(
            "aifi_edge_destination_dead_letters",
            "times a destination was given up on (its dead letter; for the primary, the task's)",
            labels=["destination"],
        )
        for name in self.names:
            retried.add_metric([name], retries.get(name, 0))
            parked.add_metric([name], dead.get(name, 0))
        yield retried
        yield parked

        histogram = HistogramMetricFamily(
            "aifi_edge_destination_delivery_seconds",
            "seconds from a task's results being ready at the hub to the last object stored"
            " in a destination (stage=stored) and to its storage commitment (stage=committed)",
            labels=["destination", "stage"],
        )
        values: dict[tuple[str, str], list[float]] = defaultdict(list)
        for stage, ended in (("stored", stored_at), ("committed", committed_at)):
            for (t, d), at in ended.items():
                if t in ready_at and states.get((t, d)) in ("stored", "committing", "committed"):
                    values[(d, stage)].append(max(0.0, at - ready_at[t]))
        for name in self.names:
            for stage in ("stored", "committed"):
                histogram.add_metric([name, stage], *_buckets(values[(name, stage)]))
        yield histogram


def _buckets(values: list[float]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative bucket counts (Prometheus histogram) of ``values``, and their sum."""
    ordered = sorted(values)
    buckets = [(_bound(b), float(bisect.bisect_right(ordered, b))) for b in TURNAROUND_BUCKETS]
    buckets.append(("+Inf", float(len(values))))
    return buckets, sum(values)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _bound(bucket: float) -> str:
    return f"{bucket:g}" if bucket != int(bucket) else f"{bucket:.1f}"
