"""Run one task: select inputs, run the algorithm, store its results as DICOM.

A worker claims the task (SCHEDULED → IN PROGRESS, atomically, so a task
queued twice runs once), reads the instances it was given, lets
:func:`aifi.algorithms.selection.select_inputs` choose what the algorithm
sees, runs it, and hands the findings to :func:`aifi.results.encode_results`.
Result objects, their references and the findings are committed together
with COMPLETED, so a crash leaves either nothing or everything. Any
:class:`aifi.errors.AlgorithmError` ends the task CANCELED with its message
as the reason (PS3.4 CC.1.1: a failed procedure step is canceled with its
reason recorded); anything unexpected ends it CANCELED as an internal error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from aifi.algorithms.base import Algorithm, Findings, InputInstance, Manifest
from aifi.algorithms.selection import select_inputs
from aifi.errors import AlgorithmError
from aifi.hub.auditing import SYSTEM_ACTOR, audit_log_of
from aifi.hub.db import SessionFactory
from aifi.hub.models import Result, Task, utcnow
from aifi.hub.schemas import TaskState
from aifi.hub.storage import ObjectStore, object_key
from aifi.results import encode_results

__all__ = ["TaskRunner"]

logger = logging.getLogger(__name__)


class TaskRunner:
    """Callable a dispatcher runs with a task id."""

    def __init__(
        self,
        sessions: SessionFactory,
        store: ObjectStore,
        algorithms: Callable[[str], Algorithm],
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._algorithms = algorithms

    def __call__(self, task_id: str) -> None:
        started = time.perf_counter()
        with self._sessions() as session:
            if not _claim(session, task_id):
                logger.debug("task %s is not SCHEDULED any more; skipped", task_id)
                return
            task = session.get(Task, task_id)
            assert task is not None
            _audit(session, task, "run.started", {"inputs": len(task.inputs)})
            written: list[str] = []
            try:
                self._run(session, task, written, started)
            except AlgorithmError as exc:
                self._discard(session, written)
                _cancel(session, task, str(exc) or type(exc).__name__, started)
            except Exception as exc:  # a worker must survive any plug-in failure
                logger.exception("task %s failed unexpectedly", task_id)
                self._discard(session, written)
                _cancel(session, task, f"internal error: {type(exc).__name__}", started)
        logger.info(
            "task %s ended %s in %.3f s", task_id, task.state, time.perf_counter() - started
        )

    def _discard(self, session: Session, written: list[str]) -> None:
        session.rollback()
        for key in written:
            self._store.delete(key)

    def _run(self, session: Session, task: Task, written: list[str], started: float) -> None:
        algorithm = self._algorithms(task.algorithm_id)
        manifest = algorithm.manifest
        if task.algorithm_version is not None and manifest.version != task.algorithm_version:
            raise AlgorithmError(
                f"the task was accepted for {manifest.id} {task.algorithm_version}, "
                f"but this hub now runs {manifest.version}; create the task again"
            )
        with contextlib.ExitStack() as files:  # local files for the run (ObjectStore.materialize)
            instances = [
                InputInstance(
                    path=files.enter_context(self._store.materialize(link.instance.object_key)),
                    sop_instance_uid=link.instance.sop_instance_uid,
                    sop_class_uid=link.instance.sop_class_uid,
                    series_instance_uid=link.instance.series_instance_uid,
                )
                for link in task.inputs
            ]
            inputs = select_inputs(manifest, instances)
            ran = time.perf_counter()
            findings = algorithm.run(inputs)
            logger.debug("task %s: algorithm ran in %.3f s", task.id, time.perf_counter() - ran)
            sources = [i.read(stop_before_pixels=True) for i in inputs.instances]
        earlier = _earlier_result_series(session, task, inputs.study_instance_uid)
        objects = encode_results(findings, manifest, sources, earlier_series=earlier)
        for kind, ds in objects:
            result = self._store_result(task, kind, ds)
            written.append(result.object_key)
            task.results.append(result)
        _complete(session, task, manifest, findings, started)
        _audit(
            session,
            task,
            "results.made",
            {
                "objects": len(task.results),
                "kinds": sorted({r.kind for r in task.results}),
                "bytes": sum(r.size for r in task.results),
            },
        )
        _audit(
            session,
            task,
            "run.completed",
            {"compute_seconds": task.compute_seconds, "urgent": task.urgent},
        )

    def _store_result(self, task: Task, kind: str, ds: pydicom.Dataset) -> Result:
        key = object_key(
            "results",
            task.hospital_id,
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
        )
        handle, staged = self._store.new_temporary()
        try:
            with handle:
                ds.save_as(handle, enforce_file_format=True)
            size = self._store.put(staged, key)
        finally:
            Path(staged).unlink(missing_ok=True)
        return Result(
            hospital_id=task.hospital_id,
            kind=kind,
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            object_key=key,
            size=size,
        )


def _earlier_result_series(session: Session, task: Task, study_instance_uid: str) -> int:
    """How many result series this hospital's earlier tasks of this algorithm made on the study.

    A re-run's series are numbered after them
    (:func:`aifi.results.sources.series_numbers`).
    """
    count = session.scalar(
        select(func.count(func.distinct(Result.series_instance_uid)))
        .join(Task, Result.task_id == Task.id)
        .where(
            Result.hospital_id == task.hospital_id,
            Result.study_instance_uid == study_instance_uid,
            Task.algorithm_id == task.algorithm_id,
            Task.id != task.id,
        )
    )
    return int(count or 0)


def _claim(session: Session, task_id: str) -> bool:
    """SCHEDULED → IN PROGRESS in one statement; False when someone else has it."""
    claimed = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state == TaskState.SCHEDULED.value)
        .values(state=TaskState.IN_PROGRESS.value, updated_at=utcnow())
    )
    session.commit()
    return bool(getattr(claimed, "rowcount", 0))


def _complete(
    session: Session, task: Task, manifest: Manifest, findings: Findings, started: float
) -> None:
    task.state = TaskState.COMPLETED.value
    task.algorithm_version = manifest.version
    task.urgent = findings.urgent
    task.findings = _json_ready(dataclasses.asdict(findings))
    task.reason = None
    task.compute_seconds = time.perf_counter() - started
    session.commit()


def _cancel(session: Session, task: Task, reason: str, started: float) -> None:
    logger.warning("task %s canceled: %s", task.id, reason)
    session.refresh(task)
    task.state = TaskState.CANCELED.value
    task.reason = reason[:2000]
    task.compute_seconds = time.perf_counter() - started
    session.commit()
    _audit(session, task, "run.canceled", {"reason": task.reason})


def _audit(session: Session, task: Task, action: str, detail: dict[str, Any]) -> None:
    audit_log_of(session).append(
        action,
        actor=SYSTEM_ACTOR,
        hospital=task.hospital_id,
        task=task.id,
        algorithm=task.algorithm_id,
        algorithm_version=task.algorithm_version,
        agreement=task.agreement_reference,
        correlation_id=task.correlation_id,
        detail=detail,
    )


def _json_ready(value: dict[str, Any]) -> dict[str, Any]:
    """Findings as plain JSON (tuples become lists; numpy scalars and others become text)."""
    loaded: dict[str, Any] = json.loads(json.dumps(value, default=_plain))
    return loaded


def _plain(value: object) -> object:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    return str(value)
