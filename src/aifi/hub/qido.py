"""QIDO-RS searches over one hospital's objects, and their DICOM JSON (PS3.18 §10.6).

The hub's tables hold each object's UIDs; every other attribute a search
matches on or returns is read from the stored object's header at query time
(pixel data never read), one header per series for study and series
searches and one per instance for instance searches, so results stay small:
``limit`` defaults to :data:`DEFAULT_LIMIT` and never exceeds
:data:`MAX_LIMIT`. Inputs (``instances``) and results (``results``) are
searched together, as WADO-RS retrieves both; another hospital's objects are
never candidates.

Matching (PS3.18 §8.3.4, PS3.4 §C.2.2.2): UID attributes match a single UID
or a comma-separated UID list; every other attribute matches its value
exactly, with ``*`` and ``?`` wildcards, or as a comma-separated list of
values. Query keys are keywords or 8-digit tags; an unknown key is refused
(:class:`QueryError`, HTTP 400) rather than ignored.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pydicom
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import select
from sqlalchemy.orm import Session

from aifi.errors import AifiError, StorageError
from aifi.hub.models import Instance, Result
from aifi.hub.storage import ObjectStore

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Level", "Query", "QueryError", "search"]

Level = Literal["study", "series", "instance"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_UIDS = {"StudyInstanceUID": "study", "SeriesInstanceUID": "series", "SOPInstanceUID": "sop"}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")

# PS3.18 Table 10.6.3-3, -4, -5: attributes returned at each level (when the object has them).
_RETURNED: dict[Level, tuple[str, ...]] = {
    "study": (
        "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName",
        "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDescription",
    ),
    "series": ("Modality", "SeriesDescription", "SeriesNumber", "PerformedProcedureStepStartDate",
               "BodyPartExamined"),
    "instance": ("SOPClassUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
                 "NumberOfFrames"),
}  # fmt: skip


class QueryError(AifiError):
    """A QIDO-RS query this hub cannot answer as asked (HTTP 400)."""


@dataclass(frozen=True)
class _Object:
    study: str
    series: str
    sop: str
    sop_class: str
    key: str


@dataclass
class Query:
    """A parsed QIDO-RS query: UID filters, attribute filters, paging, extra fields."""

    uids: dict[str, set[str]] = field(default_factory=dict)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    warnings: list[str] = field(default_factory=list)  # for the response's Warning header

    @classmethod
    def parse(cls, params: Iterable[tuple[str, str]], **path: str | None) -> Query:
        """The query from request parameters plus the UIDs named in the request path."""
        query = cls()
        for name, value in params:
            if name in _CONTROL:
                query._control(name, value)
                continue
            keyword = _keyword(name)
            values = [v.strip() for v in value.split(",") if v.strip()]
            if keyword in _UIDS:
                query.uids[_UIDS[keyword]] = set(values)
            elif values:
                query.attributes[keyword] = values
        for level, uid in path.items():
            if uid is not None:
                query.uids[level] = {uid}
        return query

    def _control(self, name: str, value: str) -> None:
        if name in ("limit", "offset"):
            if not value.isdigit():
                raise QueryError(f"{name} must be a non-negative integer, not {value!r}")
            if name == "limit":
                self.limit = min(int(value), MAX_LIMIT) or DEFAULT_LIMIT
            else:
                self.offset = int(value)
        elif name == "includefield":
            for item in value.split(","):
                if item.strip().lower() == "all":
                    self.include_all = True
                elif item.strip():
                    self.include.add(_keyword(item.strip()))
        elif name == "fuzzymatching" and value.strip().lower() == "true":
            self.warnings.append("fuzzymatching is not supported; matching is exact")


def _keyword(name: str) -> str:
    """The DICOM keyword of a query key given as keyword or tag; QueryError when unknown."""
    if _TAG.match(name):
        keyword = keyword_for_tag(Tag(int(name, 16)))
        if keyword:
            return keyword
    elif tag_for_keyword(name) is not None:
        return name
    raise QueryError(f"{name!r} is not a DICOM attribute keyword or tag this hub can search on")


def search(
    session: Session,
    store: ObjectStore,
    hospital_id: str,
    level: Level,
    query: Query,
    base_url: str,
) -> list[dict[str, Any]]:
    """The matching studies, series or instances of one hospital, as DICOM JSON."""
    objects = _candidates(session, hospital_id, query)
    groups: dict[tuple[str, ...], list[_Object]] = {}
    for obj in objects:
        key = {"study": (obj.study,), "series": (obj.study, obj.series)}.get(
            level, (obj.study, obj.series, obj.sop)
        )
        groups.setdefault(key, []).append(obj)
    matches: list[dict[str, Any]] = []
    skipped = 0
    for members in groups.values():
        entry = _entry(store, level, members, query, base_url)
        if entry is None:
            continue
        if skipped < query.offset:
            skipped += 1
            continue
        if len(matches) == query.limit:  # PS3.18 §8.3.4: a Warning says there is more
            query.warnings.append(
                f"there are more matches than limit={query.limit}; ask again with offset"
            )
            break
        matches.append(entry)
    return matches


def _candidates(session: Session, hospital_id: str, query: Query) -> list[_Object]:
    found: list[_Object] = []
    for model in (Instance, Result):
        statement = select(
            model.study_instance_uid,
            model.series_instance_uid,
            model.sop_instance_uid,
            model.sop_class_uid,
            model.object_key,
        ).where(model.hospital_id == hospital_id, model.purged_at.is_(None))
        column = {
            "study": model.study_instance_uid,
            "series": model.series_instance_uid,
            "sop": model.sop_instance_uid,
        }
        for level, uids in query.uids.items():
            statement = statement.where(column[level].in_(sorted(uids)))
        found.extend(_Object(*row) for row in session.execute(statement.order_by(model.id)))
    return found


def _headers(store: ObjectStore, members: Sequence[_Object]) -> list[Dataset]:
    """One header per series among ``members`` (per instance where members are instances)."""
    seen: dict[str, _Object] = {}
    for obj in members:
        seen.setdefault(obj.series if len({m.sop for m in members}) > 1 else obj.sop, obj)
    headers: list[Dataset] = []
    for obj in seen.values():
        try:
            with store.materialize(obj.key) as path:
                headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except StorageError:
            continue  # purged between the query and the read: not a match any more
    return headers


def _matches(headers: Sequence[Dataset], attributes: Mapping[str, list[str]]) -> bool:
    """True when, for every filter, some header's value matches one of its values."""
    for keyword, wanted in attributes.items():
        values = {_text(h[keyword]) if keyword in h else "" for h in headers}
        if not any(fnmatch.fnmatchcase(v, w) for v in values for w in wanted):
            return False
    return True


def _text(element: DataElement) -> str:
    if element.value is None:
        return ""
    if element.VM > 1:
        return "\\".join(str(v) for v in element.value)
    return str(element.value)


def _entry(
    store: ObjectStore, level: Level, members: list[_Object], query: Query, base_url: str
) -> dict[str, Any] | None:
    headers = _headers(store, members)
    if not headers or not _matches(headers, query.attributes):
        return None
    first = members[0]
    ds = Dataset()
    source = headers[0]
    keywords = set(_RETURNED[level]) | set(query.attributes) | query.include
    if query.include_all:
        keywords |= {e.keyword for e in source if e.keyword and e.VR != "SQ"}
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    for keyword in sorted(keywords):
        if keyword in source and keyword not in _UIDS:
            ds.add(source[keyword])
    ds.StudyInstanceUID = first.study
    url = f"{base_url}/studies/{first.study}"
    if level == "study":
        ds.ModalitiesInStudy = sorted({str(h.get("Modality", "")) for h in headers} - {""})
        ds.NumberOfStudyRelatedSeries = len({m.series for m in members})
        ds.NumberOfStudyRelatedInstances = len(members)
    else:
        ds.SeriesInstanceUID = first.series
        url += f"/series/{first.series}"
        if level == "series":
            ds.NumberOfSeriesRelatedInstances = len(members)
        else:
            ds.SOPClassUID = first.sop_class
            ds.SOPInstanceUID = first.sop
            url += f"/instances/{first.sop}"
    ds.RetrieveURL = url
    return ds.to_json_dict()
