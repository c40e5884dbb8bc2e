"""The result objects of an outside performer's findings, made as for the hub's own algorithms.

An outside performer (:mod:`aifi.hub.workitems`) hands in a findings
document (:mod:`aifi.algorithms.findings_json`), not DICOM: the hub makes
the SR (and GSPS, SC where the algorithm's manifest ``produces`` them) with
the same encoding as a run of its own (:func:`aifi.hub.executor.perform`,
IHE AIR result objects), on the workitem's inputs as the sources, its prior
studies as other evidence, numbered after the earlier result series of the
study (:func:`aifi.hub.runner.earlier_result_series`). The objects are put
into the object store here; their rows are committed by the caller with
COMPLETED, fenced on the performer's claim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from aifi.algorithms.base import AlgorithmInput, Findings, InputInstance, Manifest, PriorStudyInput
from aifi.hub.executor import Job, Outcome, perform
from aifi.hub.models import INPUT_PRIOR, Instance, Task
from aifi.hub.runner import earlier_result_series, store_result
from aifi.hub.storage import ObjectStore

__all__ = ["Made", "current_inputs", "discard", "make_results"]


@dataclass(frozen=True)
class Made:
    """The encoded results of handed-in findings and the store keys they were put under."""

    outcome: Outcome
    keys: tuple[str, ...]


@dataclass
class _HandedIn:
    """The algorithm as far as the encoding sees it: its manifest, and findings made elsewhere."""

    manifest: Manifest
    findings: Findings

    def run(self, inputs: AlgorithmInput) -> Findings:
        return self.findings


def current_inputs(task: Task) -> list[Instance]:
    """The instances of the task's own study (not its priors), in upload order."""
    return sorted(
        (link.instance for link in task.inputs if link.role != INPUT_PRIOR), key=lambda i: i.id
    )


def make_results(
    session: Session, task: Task, store: ObjectStore, manifest: Manifest, findings: Findings
) -> Made:
    """Encode ``findings`` on the task's inputs and put the objects into ``store``.

    Raises :class:`aifi.errors.AlgorithmError` or ``ValueError`` when the
    findings cannot be made into the manifest's result objects (nothing is
    left in the store then).
    """
    priors: dict[str, list[Instance]] = {}
    for link in sorted(task.inputs, key=lambda link: link.instance_id):
        if link.role == INPUT_PRIOR:
            priors.setdefault(link.instance.study_instance_uid, []).append(link.instance)
    earlier = earlier_result_series(session, task)
    with contextlib.ExitStack() as stack:

        def local(instances: list[Instance]) -> tuple[InputInstance, ...]:
            return tuple(_materialized(stack, store, i) for i in instances)

        inputs = AlgorithmInput(
            study_instance_uid=task.study_instance_uid,
            instances=local(current_inputs(task)),
            priors=tuple(
                PriorStudyInput(study_instance_uid=study, instances=local(group))
                for study, group in priors.items()
            ),
        )
        outcome = perform(_HandedIn(manifest, findings), Job(task.algorithm_id, inputs, earlier))
    keys: list[str] = []
    try:
        for encoded in outcome.results:
            keys.append(store_result(store, task.hospital_id, encoded))
    except BaseException:
        discard(store, keys)
        raise
    return Made(outcome, tuple(keys))


def discard(store: ObjectStore, keys: Iterable[str]) -> None:
    """Take objects out of the store again (a COMPLETED that could not be committed)."""
    for key in keys:
        store.delete(key)


def _materialized(stack: contextlib.ExitStack, store: ObjectStore, row: Instance) -> InputInstance:
    return InputInstance(
        path=stack.enter_context(store.materialize(row.object_key)),
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        series_instance_uid=row.series_instance_uid,
    )
