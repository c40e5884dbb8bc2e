"""Drift of an algorithm version: its recent figures against its first weeks.

A model validated on one population can quietly degrade when the inputs
change (a new scanner, another kVp protocol) or when its answers do. For
each algorithm version the hub compares a **baseline** -- the first
``drift_baseline_days`` after the version's first task -- with the
**recent** window, the last ``drift_window_days``:

* positive-finding rate of completed tasks (absolute change),
* readers' agreement (IHE AIRAI verdicts, :mod:`aifi.hub.feedback`; recent rate),
* manufacturer and kVp mix of the input instances (total variation distance),
* mean pixel spacing of the inputs (relative change).

A figure is judged only when both windows have ``drift_min_samples``
observations, and only once the recent window lies after the baseline.
The acquisition figures are taken at STOW-RS by :func:`input_statistics`
from the pseudonymized header: Manufacturer (0008,0070), KVP (0018,0060),
Pixel Spacing (0028,0030) or Imager Pixel Spacing (0018,1164).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aifi.hub.config import HubSettings
from aifi.hub.models import Feedback, InputStatistics, Instance, Task, TaskInput, utcnow
from aifi.protocol.schemas import TaskState

__all__ = [
    "DriftBounds",
    "DriftReport",
    "Figure",
    "Figures",
    "drift_reports",
    "input_statistics",
    "is_positive",
]


@dataclass(frozen=True)
class DriftBounds:
    """The configured windows and bounds (from :class:`HubSettings`)."""

    baseline_days: float = 14.0
    window_days: float = 7.0
    min_samples: int = 20
    max_positive_rate_change: float = 0.15
    min_agreement: float = 0.8
    max_distribution_distance: float = 0.3
    max_spacing_change: float = 0.2

    @classmethod
    def of(cls, settings: HubSettings) -> DriftBounds:
        return cls(
            baseline_days=settings.drift_baseline_days,
            window_days=settings.drift_window_days,
            min_samples=settings.drift_min_samples,
            max_positive_rate_change=settings.drift_max_positive_rate_change,
            min_agreement=settings.drift_min_agreement,
            max_distribution_distance=settings.drift_max_distribution_distance,
            max_spacing_change=settings.drift_max_spacing_change,
        )


@dataclass(frozen=True)
class Figure:
    """One watched figure of a version: baseline, recent, and whether it left its bound."""

    name: str
    baseline: float | None
    recent: float | None
    baseline_samples: int
    recent_samples: int
    change: float | None
    bound: float
    flagged: bool
    note: str = ""


@dataclass(frozen=True)
class DriftReport:
    algorithm_id: str
    algorithm_version: str
    first_task_at: datetime
    baseline_end: datetime
    recent_start: datetime
    figures: tuple[Figure, ...] = field(default=())

    @property
    def flagged(self) -> bool:
        return any(f.flagged for f in self.figures)

    @property
    def flags(self) -> list[str]:
        return [f.name for f in self.figures if f.flagged]


@dataclass(frozen=True)
class Figures:
    """The acquisition figures of one received instance (header only, no identity)."""

    sop_instance_uid: str
    modality: str | None
    manufacturer: str | None
    kvp: float | None
    pixel_spacing_mm: float | None

    @classmethod
    def of(cls, ds: Dataset) -> Figures:
        return cls(
            sop_instance_uid=str(ds.SOPInstanceUID),
            modality=str(ds.get("Modality", "") or "").strip()[:16] or None,
            manufacturer=str(ds.get("Manufacturer", "") or "").strip()[:64] or None,
            kvp=_number(ds.get("KVP")),
            pixel_spacing_mm=_spacing(ds),
        )


def input_statistics(hospital_id: str, figures: Figures) -> InputStatistics:
    """The row of one received instance's acquisition figures, for drift of the inputs."""
    return InputStatistics(hospital_id=hospital_id, **dataclasses.asdict(figures))


def is_positive(findings: dict[str, object] | None) -> bool:
    """A completed task's result reports a finding (Findings.finding is set)."""
    return bool(findings) and findings.get("finding") is not None  # type: ignore[union-attr]


def drift_reports(
    session: Session, bounds: DriftBounds, *, now: datetime | None = None
) -> list[DriftReport]:
    """One report per algorithm version that has tasks, by algorithm and version."""
    now = now or utcnow()
    versions = session.execute(
        select(Task.algorithm_id, Task.algorithm_version, func.min(Task.created_at))
        .where(Task.algorithm_version.is_not(None))
        .group_by(Task.algorithm_id, Task.algorithm_version)
        .order_by(Task.algorithm_id, Task.algorithm_version)
    )
    reports = []
    for algorithm_id, version, first in versions:
        assert version is not None  # filtered in the query
        baseline_end = first + timedelta(days=bounds.baseline_days)
        recent_start = now - timedelta(days=bounds.window_days)
        windows = _Windows(first, baseline_end, recent_start, now)
        figures = (
            _positive_rate(session, algorithm_id, version, windows, bounds),
            _agreement(session, algorithm_id, version, windows, bounds),
            *_inputs(session, algorithm_id, version, windows, bounds),
        )
        reports.append(
            DriftReport(algorithm_id, version, first, baseline_end, recent_start, figures)
        )
    return reports


@dataclass(frozen=True)
class _Windows:
    first: datetime
    baseline_end: datetime
    recent_start: datetime
    now: datetime

    @property
    def apart(self) -> bool:
        """The recent window starts after the baseline ends (else nothing is judged)."""
        return self.recent_start >= self.baseline_end

    def which(self, at: datetime) -> str | None:
        if self.first <= at < self.baseline_end:
            return "baseline"
        if self.recent_start <= at <= self.now and self.apart:
            return "recent"
        return None


def _positive_rate(
    session: Session, algorithm_id: str, version: str, windows: _Windows, bounds: DriftBounds
) -> Figure:
    rows = session.execute(
        select(Task.created_at, Task.findings).where(
            Task.algorithm_id == algorithm_id,
            Task.algorithm_version == version,
            Task.state == TaskState.COMPLETED.value,
        )
    )
    seen: dict[str, list[bool]] = {"baseline": [], "recent": []}
    for created_at, findings in rows:
        window = windows.which(created_at)
        if window is not None:
            seen[window].append(is_positive(findings))
    return _judge_change(
        "positive_rate",
        _rate(seen["baseline"]),
        _rate(seen["recent"]),
        len(seen["baseline"]),
        len(seen["recent"]),
        bounds.max_positive_rate_change,
        bounds,
        windows,
    )


def _agreement(
    session: Session, algorithm_id: str, version: str, windows: _Windows, bounds: DriftBounds
) -> Figure:
    rows = session.execute(
        select(Feedback.recorded_at, Feedback.verdict).where(
            Feedback.algorithm_id == algorithm_id, Feedback.algorithm_version == version
        )
    )
    seen: dict[str, list[bool]] = {"baseline": [], "recent": []}
    for recorded_at, verdict in rows:
        window = windows.which(recorded_at)
        if window is not None:
            seen[window].append(verdict == "agree")
    baseline, recent = _rate(seen["baseline"]), _rate(seen["recent"])
    samples = len(seen["recent"])
    judged = windows.apart and samples >= bounds.min_samples and recent is not None
    return Figure(
        name="agreement",
        baseline=baseline,
        recent=recent,
        baseline_samples=len(seen["baseline"]),
        recent_samples=samples,
        change=None if baseline is None or recent is None else recent - baseline,
        bound=bounds.min_agreement,
        flagged=bool(judged and recent is not None and recent < bounds.min_agreement),
        note="" if judged else _why_not(windows, samples, bounds),
    )


def _inputs(
    session: Session, algorithm_id: str, version: str, windows: _Windows, bounds: DriftBounds
) -> list[Figure]:
    rows = session.execute(
        select(
            Task.created_at,
            InputStatistics.manufacturer,
            InputStatistics.kvp,
            InputStatistics.pixel_spacing_mm,
        )
        .join(TaskInput, TaskInput.task_id == Task.id)
        .join(Instance, Instance.id == TaskInput.instance_id)
        .join(
            InputStatistics,
            (InputStatistics.hospital_id == Instance.hospital_id)
            & (InputStatistics.sop_instance_uid == Instance.sop_instance_uid),
        )
        .where(Task.algorithm_id == algorithm_id, Task.algorithm_version == version)
    )
    manufacturers: dict[str, list[str]] = {"baseline": [], "recent": []}
    kvps: dict[str, list[str]] = {"baseline": [], "recent": []}
    spacings: dict[str, list[float]] = {"baseline": [], "recent": []}
    for created_at, manufacturer, kvp, spacing in rows:
        window = windows.which(created_at)
        if window is None:
            continue
        if manufacturer is not None:
            manufacturers[window].append(manufacturer)
        if kvp is not None:
            kvps[window].append(f"{int(kvp // 10) * 10} kV")
        if spacing is not None:
            spacings[window].append(spacing)
    figures = [
        _judge_mix("manufacturer", manufacturers, bounds, windows),
        _judge_mix("kvp", kvps, bounds, windows),
    ]
    baseline = _mean(spacings["baseline"])
    recent = _mean(spacings["recent"])
    relative = None
    if baseline and recent is not None:
        relative = abs(recent - baseline) / baseline
    figures.append(
        _judged(
            "pixel_spacing",
            baseline,
            recent,
            len(spacings["baseline"]),
            len(spacings["recent"]),
            relative,
            bounds.max_spacing_change,
            bounds,
            windows,
        )
    )
    return figures


def _judge_mix(
    name: str, values: dict[str, list[str]], bounds: DriftBounds, windows: _Windows
) -> Figure:
    distance = None
    if values["baseline"] and values["recent"]:
        distance = _total_variation(values["baseline"], values["recent"])
    return _judged(
        name,
        None,
        None,
        len(values["baseline"]),
        len(values["recent"]),
        distance,
        bounds.max_distribution_distance,
        bounds,
        windows,
        note=_mix_note(values),
    )


def _judge_change(
    name: str,
    baseline: float | None,
    recent: float | None,
    baseline_samples: int,
    recent_samples: int,
    bound: float,
    bounds: DriftBounds,
    windows: _Windows,
) -> Figure:
    change = None if baseline is None or recent is None else abs(recent - baseline)
    return _judged(
        name, baseline, recent, baseline_samples, recent_samples, change, bound, bounds, windows
    )


def _judged(
    name: str,
    baseline: float | None,
    recent: float | None,
    baseline_samples: int,
    recent_samples: int,
    change: float | None,
    bound: float,
    bounds: DriftBounds,
    windows: _Windows,
    *,
    note: str = "",
) -> Figure:
    enough = min(baseline_samples, recent_samples) >= bounds.min_samples
    judged = windows.apart and enough and change is not None
    if not judged:
        note = _why_not(windows, min(baseline_samples, recent_samples), bounds)
    return Figure(
        name=name,
        baseline=baseline,
        recent=recent,
        baseline_samples=baseline_samples,
        recent_samples=recent_samples,
        change=change,
        bound=bound,
        flagged=bool(judged and change is not None and change > bound),
        note=note,
    )


def _why_not(windows: _Windows, samples: int, bounds: DriftBounds) -> str:
    if not windows.apart:
        return "the version is younger than its baseline and one window"
    return f"not judged: {samples} observations, {bounds.min_samples} needed"


def _mix_note(values: dict[str, list[str]]) -> str:
    def top(items: Sequence[str]) -> str:
        counts = Counter(items).most_common(3)
        return ", ".join(f"{k} {v / len(items):.0%}" for k, v in counts) or "none"

    return f"baseline: {top(values['baseline'])}; recent: {top(values['recent'])}"


def _total_variation(a: Sequence[str], b: Sequence[str]) -> float:
    """Half the L1 distance between the two empirical distributions (0 same, 1 disjoint)."""
    ca, cb = Counter(a), Counter(b)
    keys = set(ca) | set(cb)
    return 0.5 * sum(abs(ca[k] / len(a) - cb[k] / len(b)) for k in keys)


def _rate(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _spacing(ds: Dataset) -> float | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            items = value if hasattr(value, "__iter__") and not isinstance(value, str) else [value]
            numbers = [float(v) for v in items]
        except (TypeError, ValueError):
            continue
        finite = [n for n in numbers if math.isfinite(n) and n > 0]
        if finite:
            return sum(finite) / len(finite)
    return None
