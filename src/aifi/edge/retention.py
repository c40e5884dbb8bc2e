"""Retention at the edge: received originals and outbox copies leave the disk.

The edge holds what the PACS sent only as long as it needs it. A task's
received instances and its outbox copy (the pseudonymized files) are
deleted

* ``retention.keep_delivered_days`` after its results were stored in PACS;
* ``retention.max_failed_age_days`` after it ended failed or canceled (so a
  failure can be looked at and retried for that long, but never fills the
  disk);
* instances no rule sent anywhere, ``retention.keep_unrouted_days`` after
  their study was stable.

An instance that an open task still needs is never deleted, and nothing of a
study that is still receiving is. Nor is a prior pulled for a task
(:mod:`aifi.edge.pull`) before that task is uploaded: the request's study not
yet a task, or its task pending or ready (it has no row of its own in
the task's instances, so it would otherwise count as unrouted). The state
rows stay (the audit says which task held what); the instance is marked
purged, and one ``purged`` event per task, in the edge's audit chain, says
how many files and bytes went. An instance the PACS sends again after its
purge is received again.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aifi.edge.config import RetentionSettings
from aifi.edge.state import EdgeState, InstanceRow

__all__ = ["PurgeReport", "Purger"]

logger = logging.getLogger(__name__)

_DAY = 86400.0


@dataclass(frozen=True)
class PurgeReport:
    """What one purge removed."""

    tasks: int
    instances: int
    bytes: int
    outbox_folders: int


class Purger:
    """Deletes what retention no longer keeps; :meth:`tick` runs one purge."""

    def __init__(
        self,
        state: EdgeState,
        settings: RetentionSettings,
        outbox_dir: Path,
        received_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.settings = settings
        self.outbox_dir = outbox_dir
        self.received_dir = received_dir
        self.clock = clock

    def tick(self) -> PurgeReport:
        now = self.clock()
        delivered_before = now - self.settings.keep_delivered_days * _DAY
        ended_before = now - self.settings.max_failed_age_days * _DAY
        unrouted_before = now - self.settings.keep_unrouted_days * _DAY
        by_task: dict[str | None, list[InstanceRow]] = defaultdict(list)
        awaited = self.state.awaited_priors()
        for instance, task_id in self.state.purgeable_instances(
            delivered_before, ended_before, unrouted_before
        ):
            if instance.study_instance_uid not in awaited:
                by_task[task_id].append(instance)
        tasks = {t.id: t for t in self.state.expired_tasks(delivered_before, ended_before)}
        removed = size = folders = 0
        for task_id in sorted(set(tasks) | {t for t in by_task if t is not None}):
            instances = by_task.pop(task_id, [])
            outbox = self._remove_outbox(task_id)
            freed = self._remove(instances)
            self.state.mark_purged([i.sop_instance_uid for i in instances], task_id)
            task = tasks.get(task_id)
            why = (
                f"{task.state} {_ago(now, task.delivered_at or task.updated_at)}"
                if task is not None
                else "every task holding them is past retention"
            )
            self.state.record_event(
                "purged",
                f"{len(instances)} received instances ({freed} bytes)"
                f"{' and the outbox copy' if outbox else ''} deleted; task {why}",
                task_id=task_id,
            )
            removed += len(instances)
            size += freed
            folders += outbox
        unrouted = by_task.pop(None, [])
        if unrouted:
            freed = self._remove(unrouted)
            self.state.mark_purged([i.sop_instance_uid for i in unrouted])
            studies = len({i.study_instance_uid for i in unrouted})
            self.state.record_event(
                "purged",
                f"{len(unrouted)} received instances of {studies} studies no rule routed"
                f" ({freed} bytes) deleted after {self.settings.keep_unrouted_days:g} days",
            )
            removed += len(unrouted)
            size += freed
        report = PurgeReport(len(tasks), removed, size, folders)
        if removed or folders:
            logger.info(
                "retention: %d instances (%d bytes) and %d outbox folders deleted",
                removed,
                size,
                folders,
            )
        return report

    def _remove_outbox(self, task_id: str) -> int:
        folder = self.outbox_dir / task_id
        if not folder.is_dir():
            return 0
        shutil.rmtree(folder)
        return 1

    def _remove(self, instances: list[InstanceRow]) -> int:
        """Delete the files (and folders left empty under the received folder); bytes freed."""
        freed = 0
        for instance in instances:
            try:
                freed += instance.path.stat().st_size
                instance.path.unlink()
            except FileNotFoundError:
                continue
            for parent in (instance.path.parent, instance.path.parent.parent):
                if parent == self.received_dir or self.received_dir not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break
        return freed


def _ago(now: float, then: float) -> str:
    days = (now - then) / _DAY
    return f"{days:.1f} days ago" if days >= 1 else f"{(now - then) / 3600:.1f} hours ago"
