"""Tasks as the hospital sees them: with patient, accession and study date, which never leave.

The identity comes from the encrypted pseudonym map (:func:`aifi.edge.identity.recall_identity`),
one recorded lookup per task shown, with the purpose given (``"status page"``,
``"aifi edge tasks"``). A task not yet pseudonymized has no identity in the map
and shows none.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aifi.deid import PseudonymMap
from aifi.edge.identity import recall_identity
from aifi.edge.state import EdgeState, TaskRow
from aifi.errors import AifiError, ConfigError

__all__ = ["Identity", "TaskView", "parse_since", "select_tasks", "task_view"]


@dataclass(frozen=True)
class Identity:
    """What the hospital's staff know a study by (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study)."""

    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""  # YYYY-MM-DD


@dataclass(frozen=True)
class TaskView:
    task: TaskRow
    identity: Identity | None
    results: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def turnaround_s(self) -> float | None:
        """From the study's last received instance to its results in the PACS."""
        if self.task.delivered_at is None:
            return None
        return float(self.task.delivered_at) - self.task.last_instance_at

    @property
    def stored(self) -> dict[str, int]:
        """Result kind → objects stored in the PACS."""
        return {k: s["stored"] for k, s in sorted(self.results.items()) if s.get("stored")}

    @property
    def ris(self) -> str:
        """The urgent notification's state, empty for a task that is not urgent."""
        if not self.task.urgent:
            return ""
        return self.task.notification or "pending"

    def as_dict(self) -> dict[str, object]:
        t = self.task
        ident = self.identity or Identity()
        return {
            "id": t.id,
            "algorithm": t.algorithm_id,
            "state": t.state,
            "reason": t.reason,
            "patient_name": ident.patient_name,
            "patient_id": ident.patient_id,
            "accession_number": ident.accession_number,
            "study_date": ident.study_date,
            "received_at": _iso(t.last_instance_at),
            "created_at": _iso(t.created_at),
            "updated_at": _iso(t.updated_at),
            "delivered_at": _iso(t.delivered_at),
            "turnaround_s": None if self.turnaround_s is None else round(self.turnaround_s, 3),
            "attempts": t.attempts,
            "urgent": t.urgent,
            "notification": self.ris or None,
            "results": self.results,
            "hub_task_id": t.hub_task_id,
        }


def task_view(
    state: EdgeState, pseudonym_map: PseudonymMap | None, task: TaskRow, *, purpose: str
) -> TaskView:
    """One task with its identity (a recorded lookup when the map holds it) and results."""
    identity = None
    if pseudonym_map is not None and task.pseudo_study_uid:
        identity = _identity(pseudonym_map, task.pseudo_study_uid, purpose)
    return TaskView(task, identity, state.deliveries_by_kind(task.id))


def select_tasks(
    state: EdgeState,
    *,
    states: Sequence[str] | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[TaskRow]:
    """Tasks in ``states`` created at or after ``since``, newest first, at most ``limit``."""
    tasks = [t for t in state.tasks(states) if since is None or t.created_at >= since]
    tasks.sort(key=lambda t: t.created_at, reverse=True)
    return tasks[:limit] if limit is not None else tasks


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhd])\s*$")


def parse_since(text: str, now: float | None = None) -> float:
    """``30m``, ``24h``, ``7d`` (ago) or a local date/time ``2026-12-01[T10:00]``: Unix time."""
    now = time.time() if now is None else now
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return now - amount * {"m": 60, "h": 3600, "d": 86400}[unit]
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a duration (30m, 24h, 7d) nor a date (2026-12-01)"
        ) from None


def _identity(pseudonym_map: PseudonymMap, pseudo_study_uid: str, purpose: str) -> Identity | None:
    try:
        ds = recall_identity(pseudonym_map, pseudo_study_uid, purpose=purpose)
    except AifiError:
        return None
    date = str(ds.get("StudyDate", "") or "")
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return Identity(
        patient_name=_name(ds.get("PatientName")),
        patient_id=str(ds.get("PatientID", "") or ""),
        accession_number=str(ds.get("AccessionNumber", "") or ""),
        study_date=date,
    )


def _name(value: object) -> str:
    """``Family, Given`` of a PN value (PS3.5 6.2.1), as hospital systems show it."""
    if value is None or str(value) == "":
        return ""
    family = str(getattr(value, "family_name", "") or "")
    given = str(getattr(value, "given_name", "") or "")
    return ", ".join(p for p in (family, given) if p) or str(value)


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return dt.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")
