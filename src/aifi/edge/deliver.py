"""Fetching results from the hub and storing them into the hospital's PACS.

The edge polls (hospitals allow no inbound connections). For each task the
hub reports COMPLETED, every result object is retrieved by WADO-RS,
re-identified (:mod:`aifi.edge.reidentify`), stored into the PACS with
C-STORE and its status recorded per object; once all are stored the edge
acknowledges delivery and the task becomes ``delivered``. A PACS that is
down or refuses an object leaves the task COMPLETED, retried on the next
poll. A task the hub CANCELED is recorded with the hub's reason.

For ``integrity-check`` tasks, the pixel digests the hub computed (carried
in the SR) are compared with those the edge computed on what it sent: the
task is marked verified or not, with the instances that differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from io import BytesIO

import pydicom
from pydicom import Dataset

from aifi.deid import PseudonymMap
from aifi.edge.config import DicomPeer
from aifi.edge.hub_client import HubClient
from aifi.edge.notify import RisPeer, build_oru, send_mllp
from aifi.edge.pacs import store_to_pacs
from aifi.edge.reidentify import reidentify
from aifi.edge.state import EdgeState, TaskRow
from aifi.errors import DeliveryError, HubRefused, HubUnavailable
from aifi.hub.schemas import TaskOut, TaskState
from aifi.results.codes import PIXEL_DATA_SHA256

__all__ = ["Deliverer", "sr_pixel_digests"]

logger = logging.getLogger(__name__)

INTEGRITY_CHECK = "integrity-check"


class Deliverer:
    def __init__(
        self,
        state: EdgeState,
        hub: HubClient,
        pacs: DicomPeer | None,
        pseudonym_map: PseudonymMap,
        *,
        ris: RisPeer | None = None,
        result_kinds: Sequence[str] = ("sr", "gsps", "sc"),
        max_backoff_s: float = 60.0,
    ) -> None:
        self.state = state
        self.hub = hub
        self.pacs = pacs
        self.ris = ris
        self.result_kinds = frozenset(result_kinds)
        self.pseudonym_map = pseudonym_map
        self.max_backoff_s = max_backoff_s
        self._retry_at: dict[str, float] = {}

    def tick(self) -> int:
        """One poll of the hub; return how many tasks changed state here."""
        if not self.state.tasks(("submitted", "SCHEDULED", "IN PROGRESS", "COMPLETED")):
            return 0
        changed = 0
        for hub_task in self.hub.unacknowledged_tasks():
            try:
                local = self.state.task(hub_task.client_task_id)
            except KeyError:
                continue  # a task of another edge of the same hospital
            if local.state in ("delivered", "CANCELED", "failed"):
                self._acknowledge_again(local, hub_task)
                continue
            changed += self._advance(local, hub_task)
        return changed

    def _advance(self, local: TaskRow, hub_task: TaskOut) -> int:
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
        if time.time() < self._retry_at.get(local.id, 0.0):
            return 0
        if local.state != "COMPLETED":
            self.state.update_task(local.id, state="COMPLETED", urgent=int(hub_task.urgent))
        return self._deliver(local, hub_task)

    def _deliver(self, local: TaskRow, hub_task: TaskOut) -> int:
        if self.pacs is None:
            self.state.update_task(local.id, reason="no PACS configured: results kept at the hub")
            return 0
        done = self.state.deliveries(local.id)
        wanted = [r for r in hub_task.results if r.kind in self.result_kinds]
        pending = [r for r in wanted if done.get(r.sop_instance_uid) != "stored"]
        original = self._original_header(local)
        datasets: list[tuple[str, Dataset]] = []
        for ref in pending:
            raw = self.hub.retrieve_instance(
                ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid
            )
            ds = pydicom.dcmread(BytesIO(raw))
            datasets.append(
                (ref.kind, reidentify(ds, self.pseudonym_map, original, task_id=local.id))
            )
        if datasets:
            self.state.record_event(
                "reidentified",
                f"{len(datasets)} result objects re-identified from the pseudonym map",
                task_id=local.id,
            )
        outcomes = store_to_pacs(self.pacs, [ds for _k, ds in datasets]) if datasets else []
        all_ok = True
        for (kind, _ds), outcome in zip(datasets, outcomes, strict=True):
            status = "stored" if outcome.ok else "failed"
            self.state.set_delivery(
                local.id, outcome.sop_instance_uid, kind, status, outcome.detail
            )
            all_ok &= outcome.ok
        if not all_ok:
            failures = [o.detail for o in outcomes if not o.ok]
            delay = min(self.max_backoff_s, 1.0 * 2 ** min(local.attempts, 6))
            self._retry_at[local.id] = time.time() + delay
            self.state.update_task(
                local.id,
                attempts=local.attempts + 1,
                reason="PACS store failed: " + "; ".join(failures),
            )
            self.state.record_event("delivery-failed", "; ".join(failures), task_id=local.id)
            return 0
        if local.algorithm_id == INTEGRITY_CHECK:
            self._verify(local, [ds for kind, ds in datasets if kind == "sr"])
        self.hub.acknowledge(hub_task.id, [r.sop_instance_uid for r in hub_task.results])
        self.state.update_task(
            local.id, state="delivered", delivered_at=time.time(), reason=None, attempts=0
        )
        self.state.record_event(
            "task-delivered",
            f"{len(hub_task.results)} result objects stored in PACS",
            task_id=local.id,
        )
        return 1

    def _later(self, local: TaskRow, reason: str) -> None:
        """Try this task's delivery again after a back-off; the reason is recorded."""
        delay = min(self.max_backoff_s, 1.0 * 2 ** min(local.attempts, 6))
        self._retry_at[local.id] = time.time() + delay
        self.state.update_task(local.id, attempts=local.attempts + 1, reason=reason)
        self.state.record_event("delivery-failed", reason, task_id=local.id)

    def _notified(self, local: TaskRow, hub_task: TaskOut, original: Dataset) -> bool:
        """Announce an urgent result to the RIS once; False means try again later."""
        if any(e["task_id"] == local.id for e in self.state.events("urgent-notified")):
            return True
        if self.ris is None:
            self.state.record_event(
                "urgent-not-notified",
                "urgent result stored in PACS; no RIS configured",
                task_id=local.id,
            )
            return True
        message = build_oru(
            self.ris,
            original,
            task_id=local.id,
            algorithm_id=hub_task.algorithm_id,
            algorithm_version=hub_task.algorithm_version,
            findings=hub_task.findings or {},
            control_id=f"{local.id[:12]}{local.attempts:03d}",
        )
        try:
            code = send_mllp(self.ris, message)
        except DeliveryError as exc:
            self._later(local, str(exc))
            return False
        self.state.record_event(
            "urgent-notified", f"ORU^R01 accepted by RIS ({code})", task_id=local.id
        )
        return True

    def _acknowledge_again(self, local: TaskRow, hub_task: TaskOut) -> None:
        """The hub missed an acknowledgement (e.g. it restarted): send it again."""
        try:
            self.hub.acknowledge(hub_task.id, [r.sop_instance_uid for r in hub_task.results])
        except (HubUnavailable, HubRefused) as exc:
            logger.warning("task %s: acknowledgement not accepted yet: %s", local.id, exc)

    def _original_header(self, local: TaskRow) -> Dataset:
        instances = self.state.task_instances(local.id)
        return pydicom.dcmread(instances[0][0].path, stop_before_pixels=True)

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
