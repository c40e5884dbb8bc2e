"""The pseudonymize stage: a task's instances (and its priors) made fit to leave the hospital.

A ``pending`` task's instances are pseudonymized into ``outbox/<task id>/``
(DICOM PS3.15 Annex E basic profile, :mod:`aifi.deid`), keeping only what the
hospital's release policy lets leave for the algorithm
(:mod:`aifi.edge.policy`); every attribute the hub requested and the policy
withheld is recorded (``release-withheld``). Doing it again after a crash gives
the same bytes: pseudonyms are keyed and deterministic. Then the task is
``ready`` for :mod:`aifi.edge.upload`.

``held``: the algorithm's active version requests more than the policy
approved; nothing is pseudonymized, the reason says what awaits approval, and
the task goes back to ``pending`` once ``aifi edge policy approve`` recorded it.

Priors (:class:`aifi.core.manifest.Priors`): the earlier studies of the same
patient a request pulled for the task (:mod:`aifi.edge.pull`) are pseudonymized
with the same pseudonymizer — the same algorithm key, so the same patient
pseudonym and the same date shift (PS3.15 E.3.6), which lets the hub see that
they belong to one patient and nothing more — into ``outbox/<task id>/priors/``,
listed in ``priors.json``. A prior is optional: one that cannot be
pseudonymized safely is left out with an event, never fails the task.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aifi.deid import PseudonymizedInstance, Pseudonymizer, PseudonymMap
from aifi.deid.descriptors import Vocabulary
from aifi.deid.keys import keyed_digest
from aifi.edge.identity import remember_identity
from aifi.edge.policy import Release
from aifi.edge.state import EdgeState, InstanceRow, TaskRow
from aifi.errors import PseudonymizationError

__all__ = [
    "HELD",
    "HELD_RECHECK_S",
    "PRIORS_FILE",
    "DigestFn",
    "Pseudonymize",
    "algorithm_key",
    "read_priors",
]

logger = logging.getLogger(__name__)

#: A held task looks at the release policy (and the hub's catalog) again this often.
HELD_RECHECK_S = 2.0
HELD = "held"
#: In a task's outbox folder: {pseudonymous prior Study Instance UID: [its SOP Instance UIDs]}.
PRIORS_FILE = "priors.json"

DigestFn = Callable[[Path], str]
Fail = Callable[[TaskRow, str], None]


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


def read_priors(folder: Path) -> dict[str, list[str]]:
    """The pseudonymized priors of a task's outbox folder (empty when it has none)."""
    path = folder / PRIORS_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(study): [str(uid) for uid in uids] for study, uids in data.items()}


@dataclass
class _Written:
    """One instance pseudonymized into the outbox, or why it was not."""

    result: PseudonymizedInstance | None
    refused: str | None = None


class Pseudonymize:
    """pending → ready (or held): pseudonymize a task's instances and its priors."""

    def __init__(
        self,
        state: EdgeState,
        key: bytes,
        pseudonym_map: PseudonymMap,
        outbox_dir: Path,
        release_for: Callable[[str], Release],
        fail: Fail,
        *,
        vocabulary: Callable[[], Vocabulary | None] = lambda: None,
        digest_for: Callable[[str], DigestFn | None] = lambda _algorithm_id: None,
    ) -> None:
        self.state = state
        self.key = key
        self.pseudonym_map = pseudonym_map
        self.outbox_dir = outbox_dir
        self.release_for = release_for
        self.fail = fail
        self.vocabulary = vocabulary
        self.digest_for = digest_for

    # -- held ↔ pending: the release policy ----------------------------------
    def _hold(self, task: TaskRow, reason: str) -> None:
        self.state.update_task(
            task.id, state=HELD, reason=reason, next_attempt_at=time.time() + HELD_RECHECK_S
        )
        if task.state != HELD or task.reason != reason:
            self.state.record_event("release-held", reason, task_id=task.id)
            logger.warning("task %s: %s", task.id, reason)

    def recheck(self, task: TaskRow) -> None:
        """A held task: resume it once the release policy covers what the algorithm requests."""
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
        self.prepare(self.state.task(task.id))

    # -- pending → ready ---------------------------------------------------
    def prepare(self, task: TaskRow) -> None:
        """Pseudonymize the task's instances and priors into its outbox folder; mark it ready."""
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
            written = self._write(pseudonymizer, instance, folder)
            if written.result is None:
                refused.append(written.refused or "")
                continue
            result = written.result
            final = folder / f"{result.sop_instance_uid}.dcm"
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
            self.fail(task, "no instance could be pseudonymized safely: " + "; ".join(refused))
            return
        priors = self._priors(task, pseudonymizer, folder, study_uid)
        self.state.update_task(task.id, state="ready", pseudo_study_uid=study_uid, attempts=0)
        self.state.record_event(
            "pseudonymized",
            f"instances pseudonymized for {task.algorithm_id}, keeping"
            f" {', '.join(release.keep) or 'nothing beyond the profile'}; {len(refused)} refused"
            + (f"; {priors} prior studies" if priors else ""),
            task_id=task.id,
        )

    def _write(self, pseudonymizer: Pseudonymizer, instance: InstanceRow, folder: Path) -> _Written:
        """Pseudonymize one instance into ``folder`` as ``<pseudonymous SOP UID>.dcm``."""
        folder.mkdir(parents=True, exist_ok=True)
        try:
            result = pseudonymizer.pseudonymize_file(instance.path, folder / "tmp.dcm")
        except PseudonymizationError as exc:  # named by its original UID only, no pair
            why = str(exc).split(" is not sent: ", 1)[-1]
            return _Written(None, f"instance {instance.sop_instance_uid} is not sent: {why}")
        (folder / "tmp.dcm").replace(folder / f"{result.sop_instance_uid}.dcm")
        self.pseudonym_map.remember(result.uid_map)
        return _Written(result)

    def _priors(
        self, task: TaskRow, pseudonymizer: Pseudonymizer, folder: Path, study_uid: str
    ) -> int:
        """Pseudonymize the task's prior studies into ``folder/priors``; how many are sent."""
        studies = self.state.prior_studies(task.id)
        listed: dict[str, list[str]] = {}
        for prior_uid in studies:
            instances = [i for i in self.state.instances(prior_uid) if i.path.exists()]
            uids: list[str] = []
            pseudo_study: str | None = None
            for instance in instances:
                written = self._write(pseudonymizer, instance, folder / "priors")
                if written.result is None:
                    self.state.record_event(
                        "prior-instance-not-sent", written.refused or "", task_id=task.id
                    )
                    continue
                uids.append(written.result.sop_instance_uid)
                pseudo_study = written.result.study_instance_uid
            if pseudo_study is None or pseudo_study == study_uid:
                self.state.record_event(
                    "prior-not-sent",
                    f"prior study {prior_uid}: no instance at the edge could be sent",
                    task_id=task.id,
                )
                continue
            listed[pseudo_study] = uids
        if studies:
            (folder / PRIORS_FILE).write_text(json.dumps(listed))  # newest first
        return len(listed)
