"""The upload stage: a ready task's pseudonymized instances to the hub, then the task itself.

``ready`` → the instances in ``outbox/<task id>/`` are sent by STOW-RS
(PS3.18 §10.5) in requests of at most 64 MiB, then the task is created at the
hub (``POST /tasks``) with the edge's task id as idempotency key → ``submitted``
once the hub confirmed it, and the outbox folder is removed.

Priors the pseudonymize stage wrote (``outbox/<task id>/priors/``, listed in
``priors.json``) go the same way and are named in the task's ``prior_studies``,
so the hub records them as the task's prior inputs.

Re-sending is harmless: the hub ignores instances it has and returns the
existing task for a known id. A hub that refuses an instance is a definite
refusal (:class:`aifi.errors.HubRefused`); one that cannot be reached raises
:class:`aifi.errors.HubUnavailable` and the driver (:mod:`aifi.edge.outbox`)
tries again later.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from aifi.edge.pseudonymize import PRIORS_FILE, read_priors
from aifi.edge.state import EdgeState, TaskRow
from aifi.errors import HubRefused
from aifi.protocol.client import HubClient
from aifi.protocol.schemas import Priority, PriorStudy, TaskCreate

__all__ = ["BATCH_BYTES", "Upload"]

logger = logging.getLogger(__name__)

#: One STOW-RS request carries at most this many bytes of instances.
BATCH_BYTES = 64 << 20
_PRIORITY_NAME: dict[int, Priority] = {0: "HIGH", 1: "MEDIUM", 2: "LOW"}  # PRIORITY_RANK


class Upload:
    """ready → submitted: STOW-RS the task's instances (and priors), then create the hub task."""

    def __init__(self, state: EdgeState, hub: HubClient, outbox_dir: Path) -> None:
        self.state = state
        self.hub = hub
        self.outbox_dir = outbox_dir

    def send(self, task: TaskRow) -> None:
        folder = self.outbox_dir / task.id
        pseudo_uids = [p for _i, p, _d in self.state.task_instances(task.id) if p is not None]
        files = [folder / f"{uid}.dcm" for uid in pseudo_uids]
        priors = read_priors(folder)
        prior_files = [folder / "priors" / f"{uid}.dcm" for uids in priors.values() for uid in uids]
        lost = [f for f in [*files, *prior_files] if not f.exists()]
        if self.state.prior_studies(task.id) and not (folder / PRIORS_FILE).exists():
            lost.append(folder / PRIORS_FILE)
        if lost:  # the outbox folder was lost: pseudonymize again
            self.state.update_task(task.id, state="pending")
            return
        failed: list[str] = []
        for batch in _batches([*prior_files, *files]):
            outcome = self.hub.store_instances(batch)
            failed.extend(f"instance {uid}: {why}" for uid, why in outcome.failed)
        if failed:
            raise HubRefused("the hub refused instances: " + "; ".join(failed), status_code=409)
        assert task.pseudo_study_uid is not None
        hub_task = self.hub.create_task(
            TaskCreate(
                client_task_id=task.id,
                algorithm_id=task.algorithm_id,
                study_instance_uid=task.pseudo_study_uid,
                sop_instance_uids=pseudo_uids,
                correlation_id=task.id,
                priority=_PRIORITY_NAME.get(task.priority, "MEDIUM"),
                prior_studies=[
                    PriorStudy(study_instance_uid=study, sop_instance_uids=uids)
                    for study, uids in priors.items()
                ],
            )
        )
        self.state.update_task(
            task.id, state="submitted", hub_task_id=hub_task.id, attempts=0, reason=None
        )
        detail = f"hub task {hub_task.id}"
        if priors:
            detail += f" with {len(priors)} prior studies"
        self.state.record_event("task-submitted", detail, task_id=task.id)
        shutil.rmtree(folder, ignore_errors=True)


def _batches(files: Sequence[Path]) -> list[list[Path]]:
    batches: list[list[Path]] = [[]]
    size = 0
    for path in files:
        length = path.stat().st_size
        if batches[-1] and size + length > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(path)
        size += length
    return batches
