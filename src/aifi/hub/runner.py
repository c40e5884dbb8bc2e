"""Run one claimed task: select inputs, run the algorithm, store its results as DICOM.

A worker holds the task's lease (:mod:`aifi.hub.leases`: claimed atomically,
so a task delivered twice runs once). The runner works in three steps and
holds a database session only in the first and the last:

1. *load*: the task, its instances, the algorithm's manifest;
   :func:`aifi.algorithms.selection.select_inputs` chooses what the
   algorithm sees — of the current study, and of each prior study (inputs
   with role ``prior``) when the manifest asks for priors: a prior none of
   whose series the manifest accepts is left out, it never refuses the task;
   the session is closed (``run.started`` was recorded with the claim, in
   its transaction: :func:`aifi.hub.leases.claim`);
2. *run*: the :class:`aifi.hub.executor.Executor` runs the algorithm and
   encodes its findings (:func:`aifi.hub.executor.perform`), within the
   manifest's ``resources.time_limit_s``, while the runner renews the lease;
3. *commit*: result objects are put into the object store, then — fenced on
   the lease still being this worker's — their rows, the findings and
   COMPLETED are committed together, so a crash leaves either nothing or
   everything, and a worker that lost its lease commits nothing.

Any :class:`aifi.errors.AlgorithmError` ends the task CANCELED with its
message as the reason (PS3.4 CC.1.1: a failed procedure step is canceled
with its reason recorded) — a run past its time limit with "time limit of N
s exceeded"; anything unexpected ends it CANCELED as an internal error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aifi.algorithms.base import (
    Algorithm,
    AlgorithmInput,
    InputInstance,
    Manifest,
    PriorStudyInput,
)
from aifi.algorithms.findings_json import findings_to_json
from aifi.algorithms.selection import select_inputs
from aifi.errors import AlgorithmError, InputNotAccepted
from aifi.hub.auditing import SYSTEM_ACTOR, record, record_on_task
from aifi.hub.db import SessionFactory, retrying
from aifi.hub.executor import EncodedResult, Executor, Job, LeaseLost, Outcome, ThreadExecutor
from aifi.hub.leases import claim, fence, release, renew, worker_identity
from aifi.hub.models import INPUT_PRIOR, Instance, Result, Task
from aifi.hub.storage import ObjectStore, object_key
from aifi.protocol.schemas import TaskState

__all__ = ["TaskRunner", "earlier_result_series", "store_result"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    """What step 1 hands on: no ORM object outlives its session."""

    task_id: str
    hospital_id: str
    algorithm_id: str
    algorithm_version: str | None
    agreement_reference: str | None
    correlation_id: str | None
    manifest: Manifest
    object_keys: tuple[str, ...]
    instances: tuple[InputInstance, ...]
    earlier_series: int
    priors: tuple[tuple[str, tuple[str, ...], tuple[InputInstance, ...]], ...] = ()
    """(pseudonymous Study Instance UID, object keys, instances) of each prior study."""


class TaskRunner:
    """Runs tasks for one worker slot: claims by id (``runner(task_id)``) or runs a claimed one.

    ``algorithms`` resolves an id to the algorithm (its manifest is read
    here; a refused model raises its reason). ``executor`` runs it (default:
    on a thread with ``algorithms``). ``lease_s`` is the lease claimed and
    renewed every third of it. ``stopping`` set: a running task is given
    back to the queue instead of finished.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        store: ObjectStore,
        algorithms: Callable[[str], Algorithm],
        executor: Executor | None = None,
        *,
        lease_s: float = 60.0,
        worker: str | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._algorithms = algorithms
        self._executor = executor or ThreadExecutor(algorithms)
        self.lease_s = lease_s
        self.worker = worker or worker_identity()
        self._stopping = stopping or threading.Event()

    def __call__(self, task_id: str) -> None:
        """Claim ``task_id`` and run it; nothing when another worker has it or it has ended."""
        if not retrying(self._sessions, lambda s: claim(s, task_id, self.worker, self.lease_s)):
            logger.debug("task %s is not SCHEDULED any more; skipped", task_id)
            return
        self.run_claimed(task_id)

    def warm(self) -> None:
        """Start the executor before taking a task (a child process loads its algorithms)."""
        self._executor.start()

    def close(self) -> None:
        self._executor.close()

    def run_claimed(self, task_id: str) -> None:
        """Run a task this worker has claimed, to COMPLETED or CANCELED (or back to the queue)."""
        started = time.perf_counter()
        try:
            loaded = retrying(self._sessions, lambda s: self._load(s, task_id))
        except AlgorithmError as exc:
            self._cancel(task_id, str(exc) or type(exc).__name__, started)
            return
        except Exception as exc:  # a worker must survive any plug-in or data failure
            logger.exception("task %s could not be prepared", task_id)
            self._cancel(task_id, f"internal error: {type(exc).__name__}", started)
            return
        if loaded is None:
            return
        written: list[str] = []
        try:
            with self._materialized(loaded) as (instances, priors):
                inputs = select_inputs(loaded.manifest, instances)
                inputs = dataclasses.replace(inputs, priors=_selected_priors(loaded, priors))
                outcome = self._execute(loaded, inputs)
            for encoded in outcome.results:
                written.append(self._store_result(loaded.hospital_id, encoded))
            ended = retrying(
                self._sessions, lambda s: self._complete(s, loaded, outcome, written, started)
            )
        except LeaseLost as exc:
            logger.warning("task %s: %s", task_id, exc)
            self._discard(written)
            if self._stopping.is_set():
                retrying(self._sessions, lambda s: release(s, task_id, self.worker))
            return
        except AlgorithmError as exc:
            self._discard(written)
            self._cancel(task_id, str(exc) or type(exc).__name__, started)
            return
        except Exception as exc:
            logger.exception("task %s failed unexpectedly", task_id)
            self._discard(written)
            self._cancel(task_id, f"internal error: {type(exc).__name__}", started)
            return
        if not ended:
            self._discard(written)
            logger.warning("task %s: lease lost before its results were committed", task_id)
            return
        logger.info("task %s completed in %.3f s", task_id, time.perf_counter() - started)

    def _load(self, session: Session, task_id: str) -> _Loaded | None:
        task = session.get(Task, task_id)
        if task is None or task.state != TaskState.IN_PROGRESS or task.claimed_by != self.worker:
            logger.debug("task %s is not this worker's; skipped", task_id)
            return None
        manifest = self._algorithms(task.algorithm_id).manifest
        if task.algorithm_version is not None and manifest.version != task.algorithm_version:
            raise AlgorithmError(
                f"the task was accepted for {manifest.id} {task.algorithm_version}, "
                f"but this hub now runs {manifest.version}; create the task again"
            )
        links = [link.instance for link in task.inputs if link.role != INPUT_PRIOR]
        prior_links = [link.instance for link in task.inputs if link.role == INPUT_PRIOR]
        by_study: dict[str, list[Instance]] = {}
        if manifest.priors is not None:  # only an algorithm that asks for priors gets them
            for instance in sorted(prior_links, key=lambda i: i.id):
                by_study.setdefault(instance.study_instance_uid, []).append(instance)
        # its run.started was recorded with the claim (aifi.hub.leases.claim)
        return _Loaded(
            task_id=task.id,
            hospital_id=task.hospital_id,
            algorithm_id=task.algorithm_id,
            algorithm_version=task.algorithm_version,
            agreement_reference=task.agreement_reference,
            correlation_id=task.correlation_id,
            manifest=manifest,
            object_keys=tuple(i.object_key for i in links),
            instances=tuple(_unread(i) for i in links),
            earlier_series=earlier_result_series(session, task),
            priors=tuple(
                (study, tuple(i.object_key for i in group), tuple(_unread(i) for i in group))
                for study, group in by_study.items()
            ),
        )

    @contextlib.contextmanager
    def _materialized(
        self, loaded: _Loaded
    ) -> Iterator[tuple[list[InputInstance], list[tuple[str, list[InputInstance]]]]]:
        """The inputs (current, then priors by study) as local files for the run.

        A copy in staging where the store is remote.
        """
        with contextlib.ExitStack() as stack:

            def local(
                instances: tuple[InputInstance, ...], keys: tuple[str, ...]
            ) -> list[InputInstance]:
                return [
                    dataclasses.replace(
                        instance, path=stack.enter_context(self._store.materialize(key))
                    )
                    for instance, key in zip(instances, keys, strict=True)
                ]

            yield (
                local(loaded.instances, loaded.object_keys),
                [(study, local(instances, keys)) for study, keys, instances in loaded.priors],
            )

    def _execute(self, loaded: _Loaded, inputs: AlgorithmInput) -> Outcome:
        def heartbeat() -> bool:
            return retrying(
                self._sessions, lambda s: renew(s, loaded.task_id, self.worker, self.lease_s)
            )

        ran = time.perf_counter()
        outcome = self._executor.execute(
            Job(loaded.algorithm_id, inputs, loaded.earlier_series),
            loaded.manifest.resources.time_limit_s,
            heartbeat,
            max(self.lease_s / 3, 0.5),
            self._stopping.is_set,
        )
        logger.debug("task %s: ran in %.3f s", loaded.task_id, time.perf_counter() - ran)
        return outcome

    def _discard(self, written: list[str]) -> None:
        for key in written:
            self._store.delete(key)
        written.clear()

    def _store_result(self, hospital_id: str, encoded: EncodedResult) -> str:
        return store_result(self._store, hospital_id, encoded)

    def _complete(
        self,
        session: Session,
        loaded: _Loaded,
        outcome: Outcome,
        written: list[str],
        started: float,
    ) -> bool:
        """Results, findings and COMPLETED in one transaction, fenced on the lease; False: lost."""
        if not fence(session, loaded.task_id, self.worker):
            session.rollback()
            return False
        task = session.get(Task, loaded.task_id)
        assert task is not None
        for encoded, key in zip(outcome.results, written, strict=True):
            task.results.append(
                Result(
                    hospital_id=loaded.hospital_id,
                    kind=encoded.kind,
                    study_instance_uid=encoded.study_instance_uid,
                    series_instance_uid=encoded.series_instance_uid,
                    sop_instance_uid=encoded.sop_instance_uid,
                    sop_class_uid=encoded.sop_class_uid,
                    object_key=key,
                    size=len(encoded.data),
                )
            )
        findings = outcome.findings
        task.state = TaskState.COMPLETED.value
        task.algorithm_version = outcome.manifest.version
        task.urgent = findings.urgent
        task.findings = findings_to_json(findings)  # the shape remote algorithms answer with
        task.reason = None
        task.lease_until = None
        task.compute_seconds = time.perf_counter() - started
        _audit(
            session,
            loaded,
            "results.made",
            {
                "objects": len(outcome.results),
                "kinds": sorted({r.kind for r in outcome.results}),
                "bytes": sum(len(r.data) for r in outcome.results),
            },
        )
        _audit(
            session,
            loaded,
            "run.completed",
            {
                "compute_seconds": task.compute_seconds,
                "urgent": task.urgent,
                "execution_provider": findings.details.get("execution_provider"),
            },
        )
        session.commit()  # results, COMPLETED and their two events, together
        return True

    def _cancel(self, task_id: str, reason: str, started: float) -> None:
        def work(session: Session) -> bool:
            if not fence(session, task_id, self.worker):
                session.rollback()
                return False
            task = session.get(Task, task_id)
            assert task is not None
            task.state = TaskState.CANCELED.value
            task.reason = reason[:2000]
            task.lease_until = None
            task.compute_seconds = time.perf_counter() - started
            record_on_task(
                session,
                "run.canceled",
                task,
                actor=SYSTEM_ACTOR,
                detail={"reason": task.reason},
            )
            session.commit()
            return True

        if retrying(self._sessions, work):
            logger.warning("task %s canceled: %s", task_id, reason)
        else:
            logger.warning("task %s: lease lost before it could be canceled (%s)", task_id, reason)


def store_result(store: ObjectStore, hospital_id: str, encoded: EncodedResult) -> str:
    """Put one encoded result object into the store; its key (``results/...``)."""
    key = object_key(
        "results",
        hospital_id,
        encoded.study_instance_uid,
        encoded.series_instance_uid,
        encoded.sop_instance_uid,
    )
    handle, staged = store.new_temporary()
    try:
        with handle:
            handle.write(encoded.data)
        store.put(staged, key)
    finally:
        Path(staged).unlink(missing_ok=True)
    return key


def _unread(instance: Instance) -> InputInstance:
    """An input not yet materialized (its path is set by :meth:`TaskRunner._materialized`)."""
    return InputInstance(
        path=Path(),
        sop_instance_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        series_instance_uid=instance.series_instance_uid,
    )


def _selected_priors(
    loaded: _Loaded, priors: list[tuple[str, list[InputInstance]]]
) -> tuple[PriorStudyInput, ...]:
    """Each prior study's instances the manifest accepts; a prior with none is left out."""
    selected: list[PriorStudyInput] = []
    for study, instances in priors:
        try:
            chosen = select_inputs(loaded.manifest, instances)
        except InputNotAccepted as exc:
            logger.info("task %s: prior study %s left out: %s", loaded.task_id, study, exc)
            continue
        selected.append(PriorStudyInput(study_instance_uid=study, instances=chosen.instances))
    return tuple(selected)


def earlier_result_series(session: Session, task: Task) -> int:
    """How many result series this hospital's earlier tasks of this algorithm made on the study.

    A re-run's series are numbered after them
    (:func:`aifi.results.sources.series_numbers`).
    """
    count = session.scalar(
        select(func.count(func.distinct(Result.series_instance_uid)))
        .join(Task, Result.task_id == Task.id)
        .where(
            Result.hospital_id == task.hospital_id,
            Result.study_instance_uid == task.study_instance_uid,
            Task.algorithm_id == task.algorithm_id,
            Task.id != task.id,
        )
    )
    return int(count or 0)


def _audit(session: Session, loaded: _Loaded, action: str, detail: dict[str, Any]) -> None:
    record(
        session,
        action,
        actor=SYSTEM_ACTOR,
        hospital=loaded.hospital_id,
        task=loaded.task_id,
        algorithm=loaded.algorithm_id,
        algorithm_version=loaded.algorithm_version,
        agreement=loaded.agreement_reference,
        correlation_id=loaded.correlation_id,
        detail=detail,
    )
