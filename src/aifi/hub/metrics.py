"""The hub's Prometheus metrics, counted from the database at scrape time.

Every figure is read from the hub's tables when ``/metrics`` is scraped,
not kept in process memory: with several ``aifi hub api`` replicas and
workers on one database each replica answers the same, right numbers
(no prometheus-client multiprocess directory to share). Counters are
totals since the database was created; rows of received instances,
tasks, refusals and audit events stay after retention deletes the
objects, so they never go backwards.

Metric names (all prefixed ``aifi_hub_``): ``received_instances_total``,
``received_bytes_total``, ``tasks`` (by state and algorithm),
``queue_depth``, ``task_turnaround_seconds`` (histogram per algorithm,
from a task's creation to its run's end), ``task_retries_total``,
``task_reruns_total``, ``stow_refusals_total``, ``feedback_verdicts_total``,
``feedback_agreement_ratio``, ``drift_flag``, ``drift_flagged_versions``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aifi.hub.drift import DriftBounds, drift_reports
from aifi.hub.feedback import agreement
from aifi.hub.models import AUDIT_TABLES, Feedback, Hospital, Instance, Refusal, Task
from aifi.protocol.schemas import TaskState

__all__ = ["TURNAROUND_BUCKETS", "HubCollector", "metrics_text"]

TURNAROUND_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)
"""Upper bounds (seconds) of the turnaround histogram; +Inf follows."""


class HubCollector:
    """A prometheus-client collector over one database session."""

    def __init__(self, session: Session, bounds: DriftBounds) -> None:
        self._session = session
        self._bounds = bounds

    def collect(  # called-by: prometheus_client's CollectorRegistry on each scrape
        self,
    ) -> Iterator[Metric]:
        session = self._session
        names = {i: n for i, n in session.execute(select(Hospital.id, Hospital.name))}
        yield from self._received(names)
        yield from self._tasks()
        yield self._turnaround()
        yield from self._retries()
        yield self._refusals(names)
        yield from self._feedback(names)
        yield from self._drift()

    def _received(self, names: dict[str, str]) -> Iterator[Metric]:
        instances = CounterMetricFamily(
            "aifi_hub_received_instances",
            "Pseudonymized instances stored from STOW-RS, per hospital",
            labels=["hospital"],
        )
        size = CounterMetricFamily(
            "aifi_hub_received_bytes",
            "Bytes of the instances stored from STOW-RS, per hospital",
            labels=["hospital"],
        )
        rows = self._session.execute(
            select(
                Instance.hospital_id, func.count(), func.coalesce(func.sum(Instance.size), 0)
            ).group_by(Instance.hospital_id)
        )
        for hospital_id, count, total in rows:
            instances.add_metric([names.get(hospital_id, hospital_id)], int(count))
            size.add_metric([names.get(hospital_id, hospital_id)], int(total))
        yield instances
        yield size

    def _tasks(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "aifi_hub_tasks", "Tasks by state and algorithm", labels=["state", "algorithm"]
        )
        depth = 0
        rows = self._session.execute(
            select(Task.state, Task.algorithm_id, func.count()).group_by(
                Task.state, Task.algorithm_id
            )
        )
        for state, algorithm_id, count in rows:
            tasks.add_metric([state, algorithm_id], int(count))
            if state == TaskState.SCHEDULED.value:
                depth += int(count)
        yield tasks
        yield GaugeMetricFamily(
            "aifi_hub_queue_depth", "Tasks waiting for a worker (SCHEDULED)", value=depth
        )
        waiting = GaugeMetricFamily(
            "aifi_hub_queue_depth_by_priority",
            "SCHEDULED tasks by Scheduled Procedure Step Priority; HIGH is claimed first",
            labels=["priority"],
        )
        by_rank = dict(
            self._session.execute(
                select(Task.priority, func.count())
                .where(Task.state == TaskState.SCHEDULED.value)
                .group_by(Task.priority)
            ).all()
        )
        for rank, name in enumerate(("HIGH", "MEDIUM", "LOW")):
            waiting.add_metric([name], int(by_rank.get(rank, 0)))
        yield waiting

    def _turnaround(self) -> Metric:
        """Creation to end of the run, per algorithm, from the audit trail's run.completed."""
        events = AUDIT_TABLES.events
        rows = self._session.execute(
            select(Task.algorithm_id, Task.created_at, func.max(events.c.at))
            .join(events, events.c.task == Task.id)
            .where(events.c.action == "run.completed")
            .group_by(Task.id, Task.algorithm_id, Task.created_at)
        )
        buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(TURNAROUND_BUCKETS) + 1))
        sums: dict[str, float] = defaultdict(float)
        for algorithm_id, created_at, ended in rows:
            seconds = max(0.0, (datetime.fromisoformat(ended) - created_at).total_seconds())
            buckets[algorithm_id][bisect.bisect_left(TURNAROUND_BUCKETS, seconds)] += 1
            sums[algorithm_id] += seconds
        histogram = HistogramMetricFamily(
            "aifi_hub_task_turnaround_seconds",
            "From a task's creation at the hub to the end of its completed run",
            labels=["algorithm"],
        )
        for algorithm_id, counts in sorted(buckets.items()):
            cumulative, series = 0, []
            for bound, count in zip((*TURNAROUND_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                series.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            histogram.add_metric([algorithm_id], series, sums[algorithm_id])
        return histogram

    def _retries(self) -> Iterator[Metric]:
        events = AUDIT_TABLES.events
        retries = CounterMetricFamily(
            "aifi_hub_task_retries",
            "Runs started again for a task already started once (a worker died, a re-run)",
            labels=["algorithm"],
        )
        rows = self._session.execute(
            select(events.c.algorithm, func.count(), func.count(func.distinct(events.c.task)))
            .where(events.c.action == "run.started")
            .group_by(events.c.algorithm)
        )
        for algorithm_id, starts, tasks in rows:
            retries.add_metric([algorithm_id or ""], int(starts) - int(tasks))
        yield retries
        reruns = CounterMetricFamily(
            "aifi_hub_task_reruns", "Canceled tasks an operator re-ran", labels=["algorithm"]
        )
        rows = self._session.execute(
            select(events.c.algorithm, func.count())
            .where(events.c.action == "task.rerun")
            .group_by(events.c.algorithm)
        )
        for algorithm_id, count in rows:
            reruns.add_metric([algorithm_id or ""], int(count))
        yield reruns

    def _refusals(self, names: dict[str, str]) -> Metric:
        refusals = CounterMetricFamily(
            "aifi_hub_stow_refusals",
            "Instances refused at STOW-RS, per hospital and Failure Reason (PS3.18 Table I.2-2)",
            labels=["hospital", "failure_reason"],
        )
        rows = self._session.execute(
            select(Refusal.hospital_id, Refusal.failure_reason, func.count()).group_by(
                Refusal.hospital_id, Refusal.failure_reason
            )
        )
        for hospital_id, reason, count in rows:
            refusals.add_metric([names.get(hospital_id, hospital_id), f"{reason:04X}"], int(count))
        return refusals

    def _feedback(self, names: dict[str, str]) -> Iterator[Metric]:
        verdicts = CounterMetricFamily(
            "aifi_hub_feedback_verdicts",
            "Readers' verdicts on results (IHE AIRAI), one per task",
            labels=["hospital", "algorithm", "version", "verdict"],
        )
        rows = self._session.execute(
            select(
                Feedback.hospital_id,
                Feedback.algorithm_id,
                Feedback.algorithm_version,
                Feedback.verdict,
                func.count(),
            ).group_by(
                Feedback.hospital_id,
                Feedback.algorithm_id,
                Feedback.algorithm_version,
                Feedback.verdict,
            )
        )
        for hospital_id, algorithm_id, version, verdict, count in rows:
            labels = [names.get(hospital_id, hospital_id), algorithm_id, version or "", verdict]
            verdicts.add_metric(labels, int(count))
        yield verdicts
        ratio = GaugeMetricFamily(
            "aifi_hub_feedback_agreement_ratio",
            "Share of verdicts that agree with the result",
            labels=["hospital", "algorithm", "version"],
        )
        for row in agreement(self._session):
            if row.agreement_rate is not None:
                labels = [row.hospital, row.algorithm_id, row.algorithm_version or ""]
                ratio.add_metric(labels, row.agreement_rate)
        yield ratio

    def _drift(self) -> Iterator[Metric]:
        flags = GaugeMetricFamily(
            "aifi_hub_drift_flag",
            "1 when a figure of an algorithm version left its configured bound",
            labels=["algorithm", "version", "figure"],
        )
        flagged = 0
        for report in drift_reports(self._session, self._bounds):
            flagged += report.flagged
            for figure in report.figures:
                labels = [report.algorithm_id, report.algorithm_version, figure.name]
                flags.add_metric(labels, 1.0 if figure.flagged else 0.0)
        yield flags
        yield GaugeMetricFamily(
            "aifi_hub_drift_flagged_versions",
            "Algorithm versions with at least one drift flag",
            value=flagged,
        )


def metrics_text(session: Session, bounds: DriftBounds) -> bytes:
    """The Prometheus text exposition of the hub's figures now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(session, bounds))
    return generate_latest(registry)
