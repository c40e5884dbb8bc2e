"""The durable outbox: pseudonymize a task's instances and send them to the hub.

Pseudonyms are keyed per algorithm (:func:`algorithm_key`). Every step is
recorded in the edge's state before the next begins, so a
task survives an edge restart and a hub outage:

* ``pending``  → its instances are pseudonymized into ``outbox/<task id>/``
  (deterministic: doing it again after a crash gives the same bytes), keeping
  only what the hospital's release policy lets leave for the algorithm
  (:mod:`aifi.edge.policy`); every attribute the hub requested and the policy
  withheld is recorded (``release-withheld``);
* ``held``     → the algorithm's active version requests more than the policy
  approved: nothing is sent, the reason says what awaits approval, and the
  task goes back to ``pending`` once ``aifi edge policy approve`` recorded it;
* ``ready``    → uploaded by STOW-RS, then the task is created at the hub
  with the edge's task id as idempotency key;
* ``submitted`` once the hub confirmed the task.

When the hub is unreachable the task waits with exponential back-off
(capped by ``hub.max_backoff_s``); a definite refusal (an instance the hub
judged identifying, an algorithm the hospital may not use, ...) ends the
task ``failed`` with the hub's reason. Re-sending is harmless: the hub
ignores instances it has and returns the existing task for a known id.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from aifi.deid import PseudonymizedInstance, Pseudonymizer, PseudonymMap
from aifi.deid.descriptors import Vocabulary
from aifi.deid.keys import keyed_digest
from aifi.edge.identity import remember_identity
from aifi.edge.policy import Release
from aifi.edge.state import EdgeState, TaskRow
from aifi.errors import HubRefused, HubUnavailable, PseudonymizationError
from aifi.protocol.client import HubClient
from aifi.protocol.schemas import Priority, TaskCreate

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)

# One STOW-RS request carries at most this many bytes of instances.
_BATCH_BYTES = 64 << 20
# A held task looks at the release policy (and the hub's catalog) again this often.
HELD_RECHECK_S = 2.0
HELD = "held"
_PRIORITY_NAME: dict[int, Priority] = {0: "HIGH", 1: "MEDIUM", 2: "LOW"}  # PRIORITY_RANK

DigestFn = Callable[[Path], str]


def algorithm_key(key: bytes, algorithm_id: str) -> bytes:
    """The hospital's key for one algorithm's pseudonyms.

    Each algorithm gets the attributes its manifest needs and no more, so the
    same image is pseudonymized differently for, say, bone age and fracture
    detection. With one key for all, both versions would carry the same
    pseudonymous UIDs and the hub could neither keep them apart nor be kept
    from joining them. Keying per algorithm keeps every algorithm's data in
    its own pseudonym space; within it, the same patient and the same UID
    always get the same pseudonym.
    """
    return keyed_digest(key, b"algorithm", algorithm_id)


class Outbox:
    def __init__(
        self,
        state: EdgeState,
        hub: HubClient,
        key: bytes,
        pseudonym_map: PseudonymMap,
        outbox_dir: Path,
        release_for: Callable[[str], Release],
        *,
        vocabulary: Callable[[], Vocabulary | None] = lambda: None,
        digest_for: Callable[[str], DigestFn | None] = lambda _algorithm_id: None,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.state = state
        self.hub = hub
        self.key = key
        self.pseudonym_map = pseudonym_map
        self.outbox_dir = outbox_dir
        self.release_for = release_for
        self.vocabulary = vocabulary
        self.digest_for = digest_for
        self.max_backoff_s = max_backoff_s

    def tick(self) -> int:
        """Advance every task that is due, urgent and stat ones first; return how many moved.

        Due tasks come by priority, then age (:meth:`EdgeState.due_tasks`), so
        an urgent CT is pseudonymized and sent before the day's radiographs.
        """
        moved = 0
        for task in self.state.due_tasks(HELD):
            moved += self._guarded(task, self._recheck)
        for task in self.state.due_tasks("pending"):
            moved += self._guarded(task, self._prepare)
        for task in self.state.due_tasks("ready"):
            moved += self._guarded(task, self._send)
        return moved

    def _guarded(self, task: TaskRow, step: Callable[[TaskRow], None]) -> int:
        try:
            step(task)
        except HubUnavailable as exc:
            delay = min(self.max_backoff_s, 0.5 * 2**task.attempts)
            self.state.update_task(
                task.id,
                attempts=task.attempts + 1,
                next_attempt_at=time.time() + delay,
                reason=str(exc),
            )
            logger.warning("task %s: %s (next try in %.1f s)", task.id, exc, delay)
            return 0
        except HubRefused as exc:
            self._fail(task, str(exc))
        except Exception as exc:
            logger.exception("task %s: unexpected failure", task.id)
            self._fail(task, f"internal error at the edge: {type(exc).__name__}: {exc}")
        return 1

    def _fail(self, task: TaskRow, reason: str) -> None:
        self.state.update_task(task.id, state="failed", reason=reason)
        self.state.record_event("task-failed", reason, task_id=task.id)
        logger.error("task %s failed: %s", task.id, reason)

    # -- held ↔ pending: the release policy ----------------------------------
    def _hold(self, task: TaskRow, reason: str) -> None:
        self.state.update_task(
            task.id, state=HELD, reason=reason, next_attempt_at=time.time() + HELD_RECHECK_S
        )
        if task.state != HELD or task.reason != reason:
            self.state.record_event("release-held", reason, task_id=task.id)
            logger.warning("task %s: %s", task.id, reason)

    def _recheck(self, task: TaskRow) -> None:
        release = self.release_for(task.algorithm_id)
        if release.held_reason is not None:
            self._hold(task, release.held_reason)
            return
        self.state.update_task(task.id, state="pending", reason=None, next_attempt_at=0)
        self.state.record_event(
            "release-approved",
            f"the release policy now covers what {task.algorithm_id} requests; the task resumes",
            task_id=task.id,
        )
        self._prepare(self.state.task(task.id))

    # -- pending → ready ---------------------------------------------------
    def _prepare(self, task: TaskRow) -> None:
        release = self.release_for(task.algorithm_id)
        if release.held_reason is not None:
            self._hold(task, release.held_reason)
            return
        if release.withheld_detail is not None:
            self.state.record_event("release-withheld", release.withheld_detail, task_id=task.id)
        pseudonymizer = Pseudonymizer(
            algorithm_key(self.key, task.algorithm_id),
            keep=release.keep,
            vocabulary=self.vocabulary(),
        )
        folder = self.outbox_dir / task.id
        folder.mkdir(parents=True, exist_ok=True)
        digest_of = self.digest_for(task.algorithm_id)
        refused: list[str] = []
        study_uid: str | None = None
        for instance, _pseudo, _digest in self.state.task_instances(task.id):
            try:
                result: PseudonymizedInstance = pseudonymizer.pseudonymize_file(
                    instance.path, folder / "tmp.dcm"
                )
            except PseudonymizationError as exc:  # named by its original UID only, no pair
                why = str(exc).split(" is not sent: ", 1)[-1]
                refused.append(f"instance {instance.sop_instance_uid} is not sent: {why}")
                continue
            final = folder / f"{result.sop_instance_uid}.dcm"
            (folder / "tmp.dcm").replace(final)
            self.pseudonym_map.remember(result.uid_map)
            digest = digest_of(final) if digest_of is not None else None
            self.state.set_task_instance(
                task.id, instance.sop_instance_uid, result.sop_instance_uid, digest
            )
            if study_uid is None:  # identity for delivery, in the encrypted map
                remember_identity(self.pseudonym_map, result.study_instance_uid, instance.path)
            study_uid = result.study_instance_uid
        for reason in refused:
            self.state.record_event("instance-not-sent", reason, task_id=task.id)
        if study_uid is None:
            self._fail(task, "no instance could be pseudonymized safely: " + "; ".join(refused))
            return
        self.state.update_task(task.id, state="ready", pseudo_study_uid=study_uid, attempts=0)
        self.state.record_event(
            "pseudonymized",
            f"instances pseudonymized for {task.algorithm_id}, keeping"
            f" {', '.join(release.keep) or 'nothing beyond the profile'}; {len(refused)} refused",
            task_id=task.id,
        )

    # -- ready → submitted -------------------------------------------------
    def _send(self, task: TaskRow) -> None:
        folder = self.outbox_dir / task.id
        pseudo_uids = [p for _i, p, _d in self.state.task_instances(task.id) if p is not None]
        files = [folder / f"{uid}.dcm" for uid in pseudo_uids]
        missing = [f for f in files if not f.exists()]
        if missing:  # the outbox folder was lost: pseudonymize again
            self.state.update_task(task.id, state="pending")
            return
        failed: list[str] = []
        for batch in _batches(files):
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
            )
        )
        self.state.update_task(
            task.id, state="submitted", hub_task_id=hub_task.id, attempts=0, reason=None
        )
        self.state.record_event("task-submitted", f"hub task {hub_task.id}", task_id=task.id)
        shutil.rmtree(folder, ignore_errors=True)


def _batches(files: Sequence[Path]) -> list[list[Path]]:
    batches: list[list[Path]] = [[]]
    size = 0
    for path in files:
        length = path.stat().st_size
        if batches[-1] and size + length > _BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(path)
        size += length
    return batches
