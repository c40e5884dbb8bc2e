"""Orders from the RIS: "run this algorithm on that study", the same as ``aifi edge request``.

Two ways in, one desk (:class:`OrderDesk`):

* HL7 v2 over MLLP (:mod:`aifi.edge.orders_hl7`): ORM^O01 (v2.3-2.4, IHE
  RAD-4 Procedure Scheduled) and OMI^O23 (v2.5+, IHE RAD-4/RAD-13);
* FHIR R4 ``POST /fhir/ServiceRequest`` (:mod:`aifi.edge.orders_fhir`).

Each order becomes an :class:`Order` and then an IHE AIW-I workitem
(a UPS, PS3.4 Annex CC, the same rows :mod:`aifi.edge.ups` serves), so a
Task Requester that subscribed sees it like any other workitem. The order
control (HL7 ORC-1, table 0119) decides what happens:

* ``NW`` new order: the order code is mapped to an algorithm by
  ``[orders] codes``; the study is looked for at the edge, then on each
  ``[[query_retrieve]]`` peer (:func:`aifi.edge.pull.pull_study`: C-FIND,
  then C-MOVE or C-GET, with the priors the hub's catalog says the algorithm
  asks for) and the request recorded with the order's priority,
  so the assembler makes the task when the study is stable. An order that
  arrives before its images (the study may still be at the modality) waits
  and looks again every ``retry_interval_s``; after ``wait_for_images_s``
  it ends CANCELED, with the reason recorded.
* ``CA`` cancel: the waiting order, the request or the open task is canceled.
* ``XO`` change: a new priority is applied; a new order code replaces the
  order (the old one canceled, a new one made).

Every order and its outcome is an event in the edge's state and audit
trail (order number, accession number, workitem UID: never the patient).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.uid import generate_uid

from aifi.core.manifest import Priors
from aifi.edge.config import EdgeSettings
from aifi.edge.orders_config import OrdersSettings
from aifi.edge.state import EdgeState
from aifi.edge.ups import UPS_PUSH
from aifi.protocol.schemas import PRIORITY_RANK

__all__ = ["Order", "OrderAnswer", "OrderDesk", "OrderView", "order_priority", "order_views"]

logger = logging.getLogger(__name__)

Control = Literal["NW", "CA", "XO"]
#: Where an order's own bookkeeping sits in its workitem's dataset (never served).
ORDER_KEY = "x-order"
_FINAL = ("COMPLETED", "CANCELED")
_TASK_ENDED = ("delivered", "CANCELED", "failed", "discarded")

# DICOM JSON tags of the workitem (PS3.4 Table CC.2.5-3)
_SOP_CLASS, _SOP_INSTANCE, _STATE, _PRIORITY = "00080016", "00080018", "00741000", "00741200"
_WORKITEM_CODE, _INPUT_INFO, _REQUEST = "00404018", "00404021", "0040A370"
_STUDY, _ACCESSION, _PLACER = "0020000D", "00080050", "00402016"


def order_priority(code: str) -> str:
    """UPS priority (PS3.4 CC.1.1) of an order's priority.

    HL7 v2 table 0027 (ORC-7.6, OBR-27.6, TQ1-9): S stat and A ASAP are
    HIGH; FHIR ``request-priority``: stat, asap and urgent are HIGH.
    Everything else (R routine, P preop, T timing critical, routine) is MEDIUM.
    """
    return "HIGH" if code.strip().upper() in ("S", "A", "STAT", "ASAP", "URGENT") else "MEDIUM"


@dataclass(frozen=True)
class Order:
    """One order, whichever way it came: what to run on which study, and how soon."""

    control: Control
    order_number: str  # the placer's (HL7 ORC-2, FHIR identifier PLAC); the key of CA and XO
    accession: str
    study_instance_uid: str
    codes: tuple[str, ...]  # procedure codes, the first one mapped in [orders] codes wins
    priority: str  # HIGH or MEDIUM
    source: str  # "HL7 ORM^O01 v2.3 from RIS/HOSP": never the patient

    def __post_init__(self) -> None:
        if self.control not in ("NW", "CA", "XO"):
            raise ValueError(f"control {self.control!r} is not NW, CA or XO")
        if self.priority not in PRIORITY_RANK:
            raise ValueError(f"priority {self.priority!r} is not HIGH, MEDIUM or LOW")

    @property
    def key(self) -> str:
        return self.order_number or self.accession


@dataclass(frozen=True)
class OrderAnswer:
    """What the desk did with an order: taken (with its workitem) or refused, and why."""

    accepted: bool
    detail: str
    workitem_uid: str | None = None


class OrderDesk:
    """Takes orders, finds or pulls their studies, and records every outcome.

    ``take`` answers at once (an HL7 ACK, an HTTP status); finding and
    pulling the study happen in :meth:`tick`, on the desk's own thread
    once :meth:`start` ran (or called directly).
    """

    def __init__(self, settings: EdgeSettings, state: EdgeState) -> None:
        if settings.orders is None:
            raise ValueError("settings.orders is not set: there is no [orders] section")
        self.settings = settings
        self.orders: OrdersSettings = settings.orders
        self.state = state
        self._lock = threading.RLock()
        # order number / accession → workitem UIDs (see _candidates); read from the state once
        self._index: dict[str, list[str]] | None = None
        # the waiting orders' workitem UIDs → when to look again; read from the state once
        self._waiting: dict[str, float] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking orders ---------------------------------------------------------
    def take(self, order: Order, *, keep: Mapping[str, Any] | None = None) -> OrderAnswer:
        """Act on ``order`` now; ``keep``: what else to keep with a new order (a FHIR resource)."""
        with self._lock:
            if order.control == "CA":
                return self._cancel_order(order)
            if order.control == "XO":
                return self._change(order, keep)
            return self._new(order, keep)

    def algorithm_for(self, order: Order) -> str | None:
        return next((self.orders.codes[c] for c in order.codes if c in self.orders.codes), None)

    def _new(self, order: Order, keep: Mapping[str, Any] | None = None) -> OrderAnswer:
        algorithm = self.algorithm_for(order)
        if algorithm is None:
            return self._refuse(
                order,
                f"order code {', '.join(order.codes) or '(none)'} is not mapped to an algorithm:"
                " add it to [orders] codes in edge.toml"
                f" (mapped: {', '.join(sorted(self.orders.codes))})",
            )
        if not order.accession and not order.study_instance_uid:
            return self._refuse(
                order,
                "the order names no study: give the Accession Number (OBR-18, IPC-1; FHIR"
                " identifier of type ACSN) or the Study Instance UID (ZDS-1, IPC-3)",
            )
        existing = self._open(order)
        if existing is not None and existing["algorithm_id"] == algorithm:
            return OrderAnswer(True, f"order {order.key} was received already", existing["uid"])
        uid = generate_uid()
        now = time.time()
        dataset: dict[str, Any] = {
            _SOP_CLASS: {"vr": "UI", "Value": [UPS_PUSH]},
            _SOP_INSTANCE: {"vr": "UI", "Value": [uid]},
            _STATE: {"vr": "CS", "Value": ["SCHEDULED"]},
            _PRIORITY: {"vr": "CS", "Value": [order.priority]},
            _WORKITEM_CODE: {
                "vr": "SQ",
                "Value": [
                    {
                        "00080100": {"vr": "SH", "Value": [algorithm]},
                        "00080102": {"vr": "SH", "Value": ["99AIFI"]},
                    }
                ],
            },
            _REQUEST: {"vr": "SQ", "Value": [_referenced_request(order)]},
            ORDER_KEY: {
                "order_number": order.order_number,
                "accession": order.accession,
                "codes": list(order.codes),
                "source": order.source,
                "received_at": now,
                "deadline": now + self.orders.wait_for_images_s,
                "status": "waiting",
                "detail": "",
                **(keep or {}),
            },
        }
        if order.study_instance_uid:
            dataset[_INPUT_INFO] = {
                "vr": "SQ",
                "Value": [{_STUDY: {"vr": "UI", "Value": [order.study_instance_uid]}}],
            }
        self.state.add_workitem(uid, order.study_instance_uid, algorithm, order.priority, dataset)
        if self._waiting is not None:
            self._waiting[uid] = 0.0
        self._note(uid, dataset[ORDER_KEY])
        self.state.record_event(
            "order-received",
            f"{order.source}: order {order.key} (accession {order.accession or '-'}):"
            f" {algorithm}, priority {order.priority}; workitem {uid}",
        )
        self._wake.set()
        return OrderAnswer(True, f"order {order.key}: {algorithm}, workitem {uid}", uid)

    def _cancel_order(self, order: Order) -> OrderAnswer:
        item = self._open(order)
        if item is None:
            done = self._latest(order)
            if done is not None and done["state"] == "CANCELED":
                return OrderAnswer(True, f"order {order.key} was canceled already", done["uid"])
            return self._refuse(
                order,
                f"no open order {order.key} to cancel"
                + (f": it ended {done['state']}" if done is not None else " at this edge"),
            )
        reason = f"canceled by the order placer ({order.source})"
        if not self._cancel(item, reason):
            return self._refuse(order, f"order {order.key}: its results are already in PACS")
        return OrderAnswer(True, f"order {order.key} canceled", item["uid"])

    def _change(self, order: Order, keep: Mapping[str, Any] | None) -> OrderAnswer:
        item = self._open(order)
        if item is None:
            return self._new(order, keep)
        algorithm = self.algorithm_for(order)
        if algorithm is not None and algorithm != item["algorithm_id"]:
            if not self._cancel(item, f"replaced by a changed order ({order.source})"):
                return self._refuse(order, f"order {order.key}: its results are already in PACS")
            return self._new(order, keep)
        if order.priority != item["priority"]:
            self.state.update_workitem(item["uid"], priority=order.priority)
            task_id = self._task_of(item)
            if task_id is not None:
                self.state.update_task(task_id, priority=PRIORITY_RANK[order.priority])
        self.state.record_event(
            "order-changed", f"{order.source}: order {order.key}, priority {order.priority}"
        )
        return OrderAnswer(True, f"order {order.key} changed", item["uid"])

    def _refuse(self, order: Order, reason: str) -> OrderAnswer:
        self.state.record_event("order-refused", f"{order.source}: {reason}")
        return OrderAnswer(False, reason)

    # -- finding an order's workitem -----------------------------------------------
    def order_items(self) -> list[dict[str, Any]]:
        """Every workitem an order made, oldest first."""
        return [i for i in self.state.workitems() if ORDER_KEY in i["dataset"]]

    def _candidates(self, order: Order) -> list[dict[str, Any]]:
        """The workitems made by orders with this order number or accession, oldest first.

        An index (order number and accession → workitem UIDs), read from the
        state once, so an order costs the same on the first day and after a year.
        """
        if self._index is None:
            self._index = {}
            for item in self.order_items():
                self._note(item["uid"], item["dataset"][ORDER_KEY])
        uids = dict.fromkeys(
            [
                *self._index.get(f"o:{order.order_number}", []),
                *self._index.get(f"a:{order.accession}", []),
            ]
        )
        items = [i for u in uids if (i := self.state.workitem(u)) is not None]
        return sorted(items, key=lambda i: float(i["created_at"]))

    def _note(self, uid: str, mine: dict[str, Any]) -> None:
        if self._index is None:
            return
        for key in (f"o:{mine['order_number']}", f"a:{mine['accession']}"):
            if key not in ("o:", "a:"):
                self._index.setdefault(key, []).append(uid)

    def _matching(self, order: Order) -> list[dict[str, Any]]:
        found = []
        for item in self._candidates(order):
            mine = item["dataset"][ORDER_KEY]
            if order.order_number and mine["order_number"]:
                same = mine["order_number"] == order.order_number
            else:
                same = bool(order.accession) and mine["accession"] == order.accession
            if same:
                found.append(item)
        return found

    def _open(self, order: Order) -> dict[str, Any] | None:
        from aifi.edge.ups import ups_state

        for item in reversed(self._matching(order)):
            if ups_state(self.state, item) not in _FINAL:
                return item
        return None

    def _latest(self, order: Order) -> dict[str, Any] | None:
        found = self._matching(order)
        return found[-1] if found else None

    def _task_of(self, item: dict[str, Any]) -> str | None:
        if item["task_id"]:
            return str(item["task_id"])
        if item["request_id"] is None:
            return None
        answered = self.state.request_task(int(item["request_id"]))
        if answered is None:
            return None
        return answered or self.state.latest_task(item["study_instance_uid"], item["algorithm_id"])

    def _cancel(self, item: dict[str, Any], reason: str) -> bool:
        """Cancel the order's request or task; False when its results are already delivered."""
        task_id = self._task_of(item)
        if task_id is None and item["request_id"] is not None:
            self.state.fulfil_request(int(item["request_id"]), "")  # the assembler skips it now
        if task_id is not None:
            task = self.state.task(task_id)
            if task.state == "delivered":
                return False
            if task.state not in _TASK_ENDED:
                self.state.update_task(task_id, state="CANCELED", reason=reason)
                self.state.record_event("task-canceled", reason, task_id=task_id)
        self._end(item, "canceled", reason)
        return True

    def _end(self, item: dict[str, Any], status: str, reason: str) -> None:
        dataset = dict(item["dataset"])
        dataset[ORDER_KEY] = {**dataset[ORDER_KEY], "status": status, "detail": reason}
        dataset["00741002"] = {  # Procedure Step Progress Information Sequence
            "vr": "SQ",
            "Value": [
                {
                    "00741238": {"vr": "LT", "Value": [reason]},
                    "00404052": {"vr": "DT", "Value": [time.strftime("%Y%m%d%H%M%S")]},
                }
            ],
        }
        self.state.update_workitem(
            item["uid"], state="CANCELED", cancel_reason=reason, dataset=dataset
        )
        mine = dataset[ORDER_KEY]
        name = mine["order_number"] or mine["accession"]
        self.state.record_event(
            f"order-{status}", f"order {name}, workitem {item['uid']}: {reason}"
        )
        self._waiting_done(item["uid"])

    # -- waiting for the images and pulling them -------------------------------------
    def tick(self) -> int:
        """Look for the images of every waiting order whose turn it is; how many were requested."""
        requested = 0
        now = time.time()
        if self._waiting is None:  # after a start: the orders that waited when the edge stopped
            self._waiting = {i["uid"]: 0.0 for i in self.order_items() if _waiting(i)}
        for uid, due in list(self._waiting.items()):
            if due > now:
                continue
            item = self.state.workitem(uid)
            if item is None or not _waiting(item):  # canceled by UPS-RS, say
                self._waiting.pop(uid, None)
                continue
            requested += self._look(item)
        return requested

    def _priors(self, algorithm_id: str) -> Priors | None:
        """The priors the hub's catalog says ``algorithm_id`` asks for (None: none, or no hub)."""
        from aifi.edge.catalog import requested_priors
        from aifi.protocol.client import HubClient

        hub = HubClient(self.settings.hub)
        try:
            return requested_priors(hub, algorithm_id)
        finally:
            hub.close()

    def _look(self, item: dict[str, Any]) -> int:
        mine = item["dataset"][ORDER_KEY]
        name = mine["order_number"] or mine["accession"]
        study_uid = item["study_instance_uid"] or (
            self.state.study_with_accession(mine["accession"]) if mine["accession"] else None
        )
        request_id: int | None = None
        detail = ""
        if study_uid and self.state.instances(study_uid):
            from aifi.edge.prior_search import held_study_priors

            prior_uids = held_study_priors(  # pushed before: its priors pulled now
                self.settings,
                self.state,
                study_uid,
                item["algorithm_id"],
                self._priors(item["algorithm_id"]) if self.settings.query_retrieve else None,
            )
            request_id = self.state.add_request(
                study_uid,
                item["algorithm_id"],
                f"order {name}",
                priority=item["priority"],
                prior_study_uids=prior_uids,
            )
            detail = "the study is held by the edge"
        problems: list[str] = []
        priors = self._priors(item["algorithm_id"]) if request_id is None else None
        for peer in self.settings.query_retrieve if request_id is None else []:
            from aifi.edge.pull import pull_study

            try:
                outcome = pull_study(
                    self.settings,
                    peer,
                    accession=None if study_uid else mine["accession"],
                    study_uid=study_uid or None,
                    algorithm_id=item["algorithm_id"],
                    requested_by=f"order {name}",
                    priority=item["priority"],
                    priors=priors,
                    state=self.state,
                )
            except Exception as exc:  # a broken peer is one more reason to wait, not a crash
                logger.warning("order %s: the pull from %s failed: %s", name, peer.name, exc)
                problems.append(f"the pull from {peer.name or peer.ae_title} failed: {exc}")
                continue
            if outcome.request_id is not None and outcome.study_instance_uid:
                request_id, study_uid, detail = (
                    outcome.request_id,
                    outcome.study_instance_uid,
                    outcome.detail,
                )
                break
            problems.append(outcome.detail)
        with self._lock:
            current = self.state.workitem(item["uid"])
            if request_id is not None and study_uid:
                if current is None or current["state"] in _FINAL:  # canceled while pulling
                    self.state.fulfil_request(request_id, "")
                    return 0
                dataset = dict(current["dataset"])
                dataset[ORDER_KEY] = {**dataset[ORDER_KEY], "status": "requested", "detail": detail}
                dataset[_INPUT_INFO] = {
                    "vr": "SQ",
                    "Value": [{_STUDY: {"vr": "UI", "Value": [study_uid]}}],
                }
                self.state.update_workitem(
                    item["uid"], study_instance_uid=self._sealed(study_uid), request_id=request_id
                )
                self.state.update_workitem(item["uid"], dataset=dataset)
                self.state.record_event(
                    "order-requested",
                    f"order {name}, workitem {item['uid']}: {item['algorithm_id']} on study"
                    f" {study_uid}, priority {item['priority']}: {detail}",
                )
                self._waiting_done(item["uid"])
                return 1
            if current is None or current["state"] in _FINAL:
                return 0
            why = "; ".join(problems) or "the edge does not hold it and no [[query_retrieve]] peer"
            if time.time() >= float(mine["deadline"]):
                self._end(
                    current,
                    "expired",
                    f"the images did not arrive within {self.orders.wait_for_images_s:g} s"
                    f" of the order ({why})",
                )
                return 0
            if not mine["detail"]:  # said once, not at every look
                dataset = dict(current["dataset"])
                dataset[ORDER_KEY] = {**dataset[ORDER_KEY], "detail": why}
                self.state.update_workitem(item["uid"], dataset=dataset)
                self.state.record_event(
                    "order-waiting",
                    f"order {name}, workitem {item['uid']}: waiting for the images ({why})",
                )
            if self._waiting is not None:
                self._waiting[item["uid"]] = time.time() + self.orders.retry_interval_s
            return 0

    def _waiting_done(self, uid: str) -> None:
        if self._waiting is not None:
            self._waiting.pop(uid, None)

    def _sealed(self, value: str) -> str:
        return self.state._sealed(value)  # the workitems column is sealed (aifi.edge.sealed)

    # -- running ------------------------------------------------------------------
    def start(self) -> None:
        """Work on waiting orders in a thread of the desk's own (woken by each new order)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edge-orders", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("orders: unexpected error; continuing")
            woken = self._wake.wait(min(1.0, self.orders.retry_interval_s))
            if woken:
                self._wake.clear()


@dataclass(frozen=True)
class OrderView:
    """One order as an operator sees it (``aifi edge orders``): never the patient."""

    workitem_uid: str
    received_at: float
    source: str
    order_number: str
    accession: str
    algorithm_id: str
    priority: str
    status: str  # waiting, requested, in progress, completed, canceled, expired
    detail: str
    study_instance_uid: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def order_views(state: EdgeState) -> list[OrderView]:
    """Every order the edge took, newest first, with where it stands now."""
    from aifi.edge.ups import ups_state

    views = []
    for item in state.workitems():
        mine = item["dataset"].get(ORDER_KEY)
        if mine is None:
            continue
        now = ups_state(state, item)
        status = str(mine["status"])
        if now == "COMPLETED":
            status = "completed"
        elif now == "CANCELED":
            status = "expired" if status == "expired" else "canceled"
        elif now == "IN PROGRESS":
            status = "in progress"
        views.append(
            OrderView(
                workitem_uid=str(item["uid"]),
                received_at=float(mine["received_at"]),
                source=str(mine["source"]),
                order_number=str(mine["order_number"]),
                accession=str(mine["accession"]),
                algorithm_id=str(item["algorithm_id"]),
                priority=str(item["priority"]),
                status=status,
                detail=str(item.get("cancel_reason") or mine.get("detail") or ""),
                study_instance_uid=str(item["study_instance_uid"] or ""),
            )
        )
    return sorted(views, key=lambda v: v.received_at, reverse=True)


def _waiting(item: dict[str, Any]) -> bool:
    return bool(item["dataset"][ORDER_KEY]["status"] == "waiting" and item["state"] not in _FINAL)


def _referenced_request(order: Order) -> dict[str, Any]:
    """An item of Referenced Request Sequence (0040,A370): the order as the placer numbered it."""
    item: dict[str, Any] = {}
    if order.accession:
        item[_ACCESSION] = {"vr": "SH", "Value": [order.accession]}
    if order.order_number:
        item[_PLACER] = {"vr": "LO", "Value": [order.order_number[:64]]}
    if order.study_instance_uid:
        item[_STUDY] = {"vr": "UI", "Value": [order.study_instance_uid]}
    return item
