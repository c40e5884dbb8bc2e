"""Fetching results from the hub and storing them into the hospital's PACS.

The edge polls (hospitals allow no inbound connections). For each task the
hub reports COMPLETED, every result object is retrieved by WADO-RS,
re-identified (:mod:`aifi.edge.reidentify`) with the identity kept in the
pseudonym map (:mod:`aifi.edge.identity`), stored into the PACS with
C-STORE and its status recorded per object. An urgent result is then
announced to the RIS (HL7 v2.5.1 ORU^R01, :mod:`aifi.edge.notify`) and/or a
FHIR server (:mod:`aifi.edge.fhir`), until each answers with an accept.
Only then does the edge acknowledge delivery and the task become
``delivered``.

Nothing one task does can hold up another: each task (and each result
object in it) is advanced on its own, a failure is recorded with its reason
and retried after a back-off, and after ``delivery.max_attempts`` attempts
or ``delivery.max_age_s`` the task is parked as ``dead-letter`` with the
last reason, for ``aifi edge retry`` or ``aifi edge discard``. The edge pages
through every unacknowledged task the hub lists, and reconciles: at start
and periodically it asks the hub for each local task that is not final, so
a task whose acknowledgement answer was lost is settled rather than kept
COMPLETED forever. Acknowledgement is idempotent at both ends.

For ``integrity-check`` tasks, the pixel digests the hub computed (carried
in the SR) are compared with those the edge computed on what it sent: the
task is marked verified or not, with the instances that differ.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO

import pydicom
from pydicom import Dataset

from aifi.deid import PseudonymMap
from aifi.edge.commitment import Commitments
from aifi.edge.config import DeliverySettings, Destination, DicomPeer
from aifi.edge.destinations import Destinations
from aifi.edge.fhir import FhirPeer, build_report_bundle, post_bundle
from aifi.edge.identity import recall_identity
from aifi.edge.notify import RisPeer, build_oru, send_mllp
from aifi.edge.pacs import contact_of, store_to_pacs
from aifi.edge.reidentify import reidentify
from aifi.edge.state import DEAD_LETTER, FINAL_STATES, EdgeState, TaskRow
from aifi.errors import DeliveryError, HubRefused, HubUnavailable
from aifi.protocol.client import HubClient
from aifi.protocol.schemas import ResultRef, TaskOut, TaskState
from aifi.results.codes import PIXEL_DATA_SHA256

__all__ = ["Deliverer", "sr_pixel_digests"]

logger = logging.getLogger(__name__)

INTEGRITY_CHECK = "integrity-check"
# Local states whose task the hub still works on or whose results wait for PACS.
_AT_HUB = ("submitted", "SCHEDULED", "IN PROGRESS", "COMPLETED")


class Deliverer:
    def __init__(
        self,
        state: EdgeState,
        hub: HubClient,
        pacs: DicomPeer | None,
        pseudonym_map: PseudonymMap,
        *,
        ris: RisPeer | None = None,
        fhir: FhirPeer | None = None,
        result_kinds: Sequence[str] = ("sr", "gsps", "sc"),
        max_backoff_s: float = 60.0,
        settings: DeliverySettings | None = None,
        destinations: Sequence[Destination] = (),
    ) -> None:
        """``destinations``, when given, replace ``pacs``: the first is the primary."""
        self.state = state
        self.hub = hub
        self.pacs = destinations[0] if destinations else pacs
        self.ris = ris
        self.fhir = fhir
        primary_kinds = destinations[0].result_kinds if destinations else None
        self.result_kinds = frozenset(primary_kinds or result_kinds)
        self.pseudonym_map = pseudonym_map
        self.max_backoff_s = max_backoff_s
        self.settings = settings or DeliverySettings()
        self.commitments = Commitments(state)
        self.others = Destinations(
            state,
            destinations[1:],
            result_kinds,
            self.settings,
            max_backoff_s,
            commitments=self.commitments,
        )
        self._reconciled_at = 0.0

    # -- the poll ----------------------------------------------------------
    def tick(self) -> int:
        """One poll of the hub; return how many tasks changed state here."""
        open_tasks = self.state.tasks(_AT_HUB)
        if not open_tasks:
            return 0
        changed = 0
        listed: set[str] = set()
        for hub_task in self.hub.unacknowledged_tasks(wait_s=self._long_poll_s(open_tasks)):
            listed.add(hub_task.client_task_id)
            try:
                local = self.state.task(hub_task.client_task_id)
            except KeyError:
                continue  # a task of another edge of the same hospital
            changed += self._isolated(local, functools.partial(self._advance, local, hub_task))
        if time.time() - self._reconciled_at >= self.settings.reconcile_interval_s:
            changed += self.reconcile(skip=listed)
        else:
            changed += self._retried_destinations(skip=listed)
        return changed

    def _long_poll_s(self, open_tasks: Sequence[TaskRow]) -> float:
        """How long the poll may wait at the hub for a change (``[hub] long_poll_s``).

        Only while every open task waits on the hub: a COMPLETED one is being
        delivered here, and its retries must not wait on the hub. Never past
        the next reconciliation.
        """
        if any(t.state == "COMPLETED" for t in open_tasks):
            return 0.0
        until_reconcile = self._reconciled_at + self.settings.reconcile_interval_s - time.time()
        return max(0.0, min(self.hub.long_poll_s, until_reconcile))

    def _retried_destinations(self, skip: set[str]) -> int:
        """Delivered tasks an operator sent back for one destination: asked about at once.

        The hub no longer lists them (they were acknowledged), so without this
        they would wait for the next reconciliation.
        """
        changed = 0
        for local in self.state.tasks(["COMPLETED"]):
            if local.delivered_at is None or local.id in skip or local.hub_task_id is None:
                continue
            if time.time() < local.next_attempt_at:
                continue
            changed += self._isolated(local, functools.partial(self._reconcile_one, local))
        return changed

    def reconcile(self, skip: set[str] | frozenset[str] = frozenset()) -> int:
        """Ask the hub about every open local task it did not list; settle each."""
        self._reconciled_at = time.time()
        changed = 0
        for local in self.state.tasks(_AT_HUB):
            if local.id in skip or local.hub_task_id is None:
                continue
            changed += self._isolated(local, functools.partial(self._reconcile_one, local))
        return changed

    def _reconcile_one(self, local: TaskRow) -> int:
        assert local.hub_task_id is not None
        try:
            hub_task = self.hub.task(local.hub_task_id)
        except HubRefused as exc:
            if exc.status_code == 404:
                self._fail(local, f"the hub no longer knows task {local.hub_task_id}")
                return 1
            raise
        complete = local.state == "COMPLETED" and self._delivery_complete(local, hub_task)
        if hub_task.acknowledged and complete:
            # The hub committed our acknowledgement but its answer was lost.
            self._mark_delivered(local, hub_task, note="acknowledgement confirmed by the hub")
            return 1
        return self._advance(local, hub_task)

    def _isolated(self, local: TaskRow, step: Callable[[], int]) -> int:
        """Run one task's step; its failure is recorded and retried, never anyone else's."""
        try:
            return step()
        except HubUnavailable:
            raise  # the hub is down for every task: the service loop backs off
        except (HubRefused, DeliveryError) as exc:
            self._later(self.state.task(local.id), str(exc))
        except Exception as exc:  # one task's broken result must not stop the others
            logger.exception("task %s: delivery step failed", local.id)
            self._later(
                self.state.task(local.id),
                f"delivery step failed at the edge: {type(exc).__name__}: {exc}",
            )
        return 0

    def _advance(self, local: TaskRow, hub_task: TaskOut) -> int:
        if local.state in FINAL_STATES:
            self._acknowledge_again(local, hub_task)
            return 0
        if local.state == DEAD_LETTER:
            return 0  # waits for an operator's retry or discard
        if hub_task.state in (TaskState.SCHEDULED, TaskState.IN_PROGRESS):
            if local.state != hub_task.state.value:
                self.state.update_task(local.id, state=hub_task.state.value)
                return 1
            return 0
        if hub_task.state == TaskState.CANCELED:
            reason = hub_task.reason or "canceled by the hub without a reason"
            self.state.update_task(local.id, state="CANCELED", reason=reason)
            self.state.record_event("task-canceled", reason, task_id=local.id)
            self.hub.acknowledge(hub_task.id, [])
            return 1
        if local.state != "COMPLETED":
            self.state.update_task(local.id, state="COMPLETED", urgent=int(hub_task.urgent))
            # when the results became ready: the start of each destination's delivery time
            self.state.record_event(
                "results-ready", f"{len(hub_task.results)} result objects", task_id=local.id
            )
            local = self.state.task(local.id)
        if time.time() < local.next_attempt_at:
            return 0
        return self._deliver(local, hub_task)

    # -- one task's delivery -----------------------------------------------
    def _deliver(self, local: TaskRow, hub_task: TaskOut) -> int:
        if self.pacs is None:
            self.state.update_task(local.id, reason="no PACS configured: results kept at the hub")
            return 0
        if local.pseudo_study_uid is None:
            raise DeliveryError(f"task {local.id} has no pseudonymous study; cannot re-identify")
        done = self.state.deliveries(local.id)
        wanted = [r for r in hub_task.results if r.kind in self.result_kinds]
        pending = [r for r in wanted if done.get(r.sop_instance_uid) != "stored"]
        verify = local.algorithm_id == INTEGRITY_CHECK and local.verified is None
        identity: Dataset | None = None
        if pending or hub_task.urgent or verify:
            identity = recall_identity(
                self.pseudonym_map,
                local.pseudo_study_uid,
                purpose=f"deliver results of task {local.id}",
            )
        failures: list[str] = []
        datasets: list[tuple[str, Dataset]] = []
        srs: list[Dataset] = []
        fetched: dict[str, Dataset] = {}
        for ref in pending + (
            [r for r in wanted if r.kind == "sr" and r not in pending] if verify else []
        ):
            try:
                raw = self.hub.retrieve_instance(
                    ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid
                )
                assert identity is not None
                ds = reidentify(
                    pydicom.dcmread(BytesIO(raw)), self.pseudonym_map, identity, task_id=local.id
                )
            except (HubRefused, DeliveryError) as exc:
                failures.append(f"{ref.kind} {ref.sop_instance_uid}: {exc}")
                self.state.set_delivery(
                    local.id, ref.sop_instance_uid, ref.kind, "failed", str(exc)
                )
                continue
            except (
                RecursionError,
                ValueError,
                TypeError,
                KeyError,
                AttributeError,
                OSError,
            ) as exc:
                why = f"result object cannot be read or re-identified ({type(exc).__name__})"
                failures.append(f"{ref.kind} {ref.sop_instance_uid}: {why}")
                self.state.set_delivery(local.id, ref.sop_instance_uid, ref.kind, "failed", why)
                continue
            if ref.kind == "sr":
                srs.append(ds)
            if ref in pending:
                datasets.append((ref.kind, ds))
            fetched[ref.sop_instance_uid] = ds
        if datasets:
            self.state.record_event(
                "reidentified",
                f"{len(datasets)} result objects re-identified from the pseudonym map",
                task_id=local.id,
            )
            outcomes = store_to_pacs(self.pacs, [ds for _k, ds in datasets])
            self.state.record_contact("pacs", *contact_of(outcomes))
            for (kind, _ds), outcome in zip(datasets, outcomes, strict=True):
                status = "stored" if outcome.ok else "failed"
                self.state.set_delivery(
                    local.id, outcome.sop_instance_uid, kind, status, outcome.detail
                )
                if outcome.ok:
                    logger.info(
                        "task %s: %s %s stored in PACS", local.id, kind, outcome.sop_instance_uid
                    )
                else:
                    failures.append(f"{kind} {outcome.sop_instance_uid}: {outcome.detail}")
        if failures:
            self._later(local, "PACS store failed: " + "; ".join(failures))
            return 0
        if verify and srs:
            self._verify(local, srs)
        if hub_task.urgent:
            assert identity is not None
            if not self._notified(local, hub_task, identity):
                return 0
        if self.pacs.commitment and not self._committed(local, hub_task):
            return 0  # the PACS has not yet committed to keeping what it stored
        if self.others and not self.others.advance(
            local.id, hub_task.results, functools.partial(self._fetch, local, fetched)
        ):
            return 0  # another destination waits for its retry; the primary has its results
        self.hub.acknowledge(hub_task.id, self._stored_uids(local, hub_task))
        self._mark_delivered(local, hub_task)
        return 1

    def _committed(self, local: TaskRow, hub_task: TaskOut) -> bool:
        """Storage commitment of the primary (PS3.4 Annex J); False: not (yet) committed.

        No transaction yet (or the last one failed or was never answered):
        one is requested for every stored result object. A failure counts as
        a failed attempt of the task, retried with its back-off.
        """
        assert self.pacs is not None
        name = getattr(self.pacs, "name", "pacs")
        done = self.state.deliveries(local.id)
        refs = [
            (r.sop_class_uid, r.sop_instance_uid)
            for r in hub_task.results
            if done.get(r.sop_instance_uid) == "stored"
        ]
        step, detail = self.commitments.settle(self.pacs, local.id, name, refs)
        if step == "failed":
            self._later(local, detail)
        if step == "committed" and not any(
            e["kind"] == "destination-committed" and e["detail"].startswith(f"{name}:")
            for e in self.state.task_events(local.id)
        ):  # once, as the further destinations record theirs (aifi.edge.metrics reads it)
            self.state.record_event("destination-committed", f"{name}: {detail}", task_id=local.id)
        return step == "committed"

    def _fetch(self, local: TaskRow, fetched: dict[str, Dataset], ref: ResultRef) -> Dataset:
        """One result object, re-identified, for a further destination (fetched once a tick)."""
        if ref.sop_instance_uid not in fetched:
            assert local.pseudo_study_uid is not None
            identity = recall_identity(
                self.pseudonym_map,
                local.pseudo_study_uid,
                purpose=f"deliver results of task {local.id}",
            )
            raw = self.hub.retrieve_instance(
                ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid
            )
            fetched[ref.sop_instance_uid] = reidentify(
                pydicom.dcmread(BytesIO(raw)), self.pseudonym_map, identity, task_id=local.id
            )
        return fetched[ref.sop_instance_uid]

    def _stored_uids(self, local: TaskRow, hub_task: TaskOut) -> list[str]:
        done = self.state.deliveries(local.id)
        return [
            r.sop_instance_uid for r in hub_task.results if done.get(r.sop_instance_uid) == "stored"
        ]

    def _delivery_complete(self, local: TaskRow, hub_task: TaskOut) -> bool:
        done = self.state.deliveries(local.id)
        wanted = [r for r in hub_task.results if r.kind in self.result_kinds]
        stored = all(done.get(r.sop_instance_uid) == "stored" for r in wanted)
        notified = not hub_task.urgent or (local.notification or "").startswith("sent")
        return stored and notified and self.others.settled(local.id)

    def _mark_delivered(self, local: TaskRow, hub_task: TaskOut, note: str = "") -> None:
        stored = len(self._stored_uids(local, hub_task))
        # A destination given up on stays on the task, written with its state in one step.
        given_up = self.others.dead_letters(local.id)
        self.state.update_task(
            local.id,
            state="delivered",
            delivered_at=time.time(),
            reason="; ".join(f"destination {r.destination}: {r.reason}" for r in given_up) or None,
            attempts=0,
            next_attempt_at=0,
            first_failure_at=None,
        )
        self.state.record_event(
            "task-delivered",
            f"{stored} result objects stored in PACS" + (f"; {note}" if note else ""),
            task_id=local.id,
        )
        logger.info("task %s delivered: %d result objects in PACS", local.id, stored)

    def _later(self, local: TaskRow, reason: str) -> None:
        """Try this task again after a back-off, or park it as a dead letter; recorded."""
        now = time.time()
        attempts = local.attempts + 1
        first = local.first_failure_at or now
        if attempts >= self.settings.max_attempts or now - first >= self.settings.max_age_s:
            self.state.update_task(
                local.id,
                state=DEAD_LETTER,
                attempts=attempts,
                first_failure_at=first,
                reason=f"gave up after {attempts} attempts: {reason}",
            )
            self.state.record_event(
                "dead-letter",
                f"after {attempts} attempts: {reason}; 'aifi edge retry {local.id}' sends again",
                task_id=local.id,
            )
            logger.error(
                "task %s is a dead letter after %d attempts: %s", local.id, attempts, reason
            )
            return
        delay = min(self.max_backoff_s, 1.0 * 2 ** min(local.attempts, 10))
        self.state.update_task(
            local.id,
            attempts=attempts,
            next_attempt_at=now + delay,
            first_failure_at=first,
            reason=reason,
        )
        self.state.record_event("delivery-failed", reason, task_id=local.id)
        logger.warning(
            "task %s: %s (attempt %d, next in %.0f s)", local.id, reason, attempts, delay
        )

    def _fail(self, local: TaskRow, reason: str) -> None:
        self.state.update_task(local.id, state="failed", reason=reason)
        self.state.record_event("task-failed", reason, task_id=local.id)

    # -- urgent results to the RIS / FHIR ----------------------------------
    def _notified(self, local: TaskRow, hub_task: TaskOut, identity: Dataset) -> bool:
        """Announce an urgent result on every configured channel; False: try again later.

        Each attempt is recorded before it is made, so an edge killed before
        the acknowledgement sends again on restart (the RIS may see the
        message twice, never not at all).
        """
        if (local.notification or "").startswith(("sent", "not configured")):
            return True
        channels: list[tuple[str, Callable[[int], str]]] = []
        if self.ris is not None:
            ris = self.ris
            channels.append(
                (
                    "HL7 ORU^R01 to RIS",
                    lambda attempt: (
                        "ACK "
                        + send_mllp(
                            ris,
                            build_oru(
                                ris,
                                identity,
                                task_id=local.id,
                                algorithm_id=hub_task.algorithm_id,
                                algorithm_version=hub_task.algorithm_version,
                                findings=hub_task.findings or {},
                                control_id=f"{local.id[:16]}{attempt:04d}",
                                observed_at=hub_task.updated_at,
                            ),
                        )
                    ),
                )
            )
        if self.fhir is not None:
            fhir = self.fhir
            channels.append(
                (
                    "FHIR DiagnosticReport",
                    lambda _attempt: (
                        "HTTP "
                        + str(
                            post_bundle(
                                fhir,
                                build_report_bundle(
                                    fhir,
                                    identity,
                                    task_id=local.id,
                                    algorithm_id=hub_task.algorithm_id,
                                    algorithm_version=hub_task.algorithm_version,
                                    findings=hub_task.findings or {},
                                    observed_at=hub_task.updated_at,
                                ),
                            )
                        )
                    ),
                )
            )
        if not channels:
            self.state.update_task(local.id, notification="not configured (no RIS or FHIR)")
            self.state.record_event(
                "urgent-not-notified",
                "urgent result stored in PACS; no RIS or FHIR endpoint configured",
                task_id=local.id,
            )
            return True
        events = self.state.task_events(local.id)
        done = {e["detail"].split(":", 1)[0] for e in events if e["kind"] == "urgent-notified"}
        outcomes: list[str] = []
        for name, send in channels:
            if name in done:
                outcomes.append(name)
                continue
            attempt = (
                sum(
                    1
                    for e in events
                    if e["kind"] == "urgent-notify-attempt" and e["detail"].startswith(name)
                )
                + 1
            )
            self.state.record_event(
                "urgent-notify-attempt", f"{name} attempt {attempt}", task_id=local.id
            )
            try:
                answer = send(attempt)
            except DeliveryError as exc:
                self.state.record_contact(name, False, str(exc))
                self.state.update_task(
                    local.id, notification=f"pending: {name} attempt {attempt} failed: {exc}"
                )
                self._later(self.state.task(local.id), f"urgent result not announced: {exc}")
                return False
            self.state.record_contact(name, True, f"accepted ({answer})")
            self.state.record_event(
                "urgent-notified", f"{name}: accepted ({answer})", task_id=local.id
            )
            logger.info(
                "task %s: urgent result announced: %s accepted (%s)", local.id, name, answer
            )
            outcomes.append(name)
        self.state.update_task(local.id, notification="sent: " + ", ".join(outcomes))
        return True

    # -- settled tasks -----------------------------------------------------
    def _acknowledge_again(self, local: TaskRow, hub_task: TaskOut) -> None:
        """The hub missed an acknowledgement (e.g. it restarted): send it again."""
        try:
            self.hub.acknowledge(hub_task.id, self._stored_uids(local, hub_task))
        except HubRefused as exc:
            logger.warning("task %s: acknowledgement not accepted yet: %s", local.id, exc)

    def _verify(self, local: TaskRow, srs: list[Dataset]) -> None:
        sent = {
            inst.sop_instance_uid: digest
            for inst, _p, digest in self.state.task_instances(local.id)
        }
        reported: dict[str, str] = {}
        for sr in srs:
            reported.update(sr_pixel_digests(sr))
        missing = sorted(set(sent) - set(reported))
        differ = sorted(uid for uid, d in sent.items() if uid in reported and reported[uid] != d)
        ok = not missing and not differ and bool(sent)
        note = (
            f"all {len(sent)} pixel digests match"
            if ok
            else f"{len(differ)} digests differ ({', '.join(differ[:5])}); "
            f"{len(missing)} instances not reported ({', '.join(missing[:5])})"
        )
        self.state.update_task(local.id, verified=int(ok), verification=note)
        self.state.record_event(
            "integrity-verified" if ok else "integrity-mismatch", note, task_id=local.id
        )


def sr_pixel_digests(sr: Dataset) -> dict[str, str]:
    """SOP Instance UID → pixel data SHA-256 read from an integrity-check SR's content tree.

    Each measurement group (TID 1501) references its source image and holds a
    TEXT item coded :data:`aifi.results.codes.PIXEL_DATA_SHA256`.
    """
    digests: dict[str, str] = {}
    for group in _containers(sr):
        refs = list(_image_refs(group))
        texts = [
            str(item.TextValue)
            for item in group.get("ContentSequence", [])
            if item.get("ValueType") == "TEXT" and _is_digest_concept(item)
        ]
        if len(refs) == 1 and texts:
            digests[refs[0]] = texts[0]
    return digests


def _is_digest_concept(item: Dataset) -> bool:
    concept = item.ConceptNameCodeSequence[0]
    return (str(concept.CodeValue), str(concept.CodingSchemeDesignator)) == (
        PIXEL_DATA_SHA256.value,
        PIXEL_DATA_SHA256.scheme,
    )


def _containers(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "CONTAINER":
            yield item
            yield from _containers(item)


def _image_refs(group: Dataset) -> Iterator[str]:
    """Referenced SOP Instance UIDs of IMAGE items anywhere under ``group``."""
    for item in group.get("ContentSequence", []):
        if item.get("ValueType") == "IMAGE":
            for ref in item.get("ReferencedSOPSequence", []):
                yield str(ref.ReferencedSOPInstanceUID)
        elif item.get("ValueType") == "CONTAINER":
            continue
        elif "ContentSequence" in item:
            yield from _image_refs(item)
