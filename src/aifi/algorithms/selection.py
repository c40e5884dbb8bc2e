"""Selection of an algorithm's inputs from a pseudonymized study.

The platform, not the algorithm, decides which instances an algorithm sees
(as in the MONAI Deploy App SDK's ``DICOMSeriesSelectorOperator``): the
manifest's ``accepts`` rules are data, executed here, per series, on the
headers of its instances (read with ``stop_before_pixels=True``).

1. Objects that are not images are dropped unless the manifest says
   ``accepts_non_images``: structured reports, presentation states, key
   object selections, segmentations, RT objects, waveforms, encapsulated
   documents, DICOMDIRs, ... The decision is made on the SOP Class UID
   (PS3.4 Annex B lists the Storage SOP Classes): a class is an image when
   its name in pydicom's UID dictionary contains "Image Storage" (plus the
   few image classes whose names do not). Unknown, private SOP classes are
   not images: aifi cannot know what they hold.
2. Each remaining series is kept when its first instance (in SOP Instance
   UID order) satisfies every rule of the manifest. Rules describe series
   (Modality, BodyPartExamined, SeriesDescription, PatientAge, ...).
3. When nothing is left, :class:`aifi.errors.InputNotAccepted` says why,
   series by series, naming the attribute and the value that did not fit and
   only pseudonymous UIDs.

:func:`series_matches` is the same test for one dataset; the edge's router
uses it to decide which stable studies go to which algorithm.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from itertools import groupby

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from aifi.algorithms.base import AlgorithmInput, InputInstance, Manifest, SelectionRule
from aifi.errors import DicomInputError, InputNotAccepted

__all__ = ["is_image_sop_class", "select_inputs", "series_matches"]

logger = logging.getLogger(__name__)

_IMAGE_CLASSES_WITHOUT_IMAGE_IN_NAME = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
    }
)

_SHOWN_PATIENT_KEYWORDS = frozenset({"PatientAge", "PatientSex", "PatientSize", "PatientWeight"})
"""Patient Module attributes whose values a refusal message may show."""

_MAX_SHOWN_VALUE = 64


def is_image_sop_class(sop_class_uid: str) -> bool:
    """Whether instances of this SOP Class are images (PS3.4 Annex B)."""
    uid = UID(sop_class_uid)
    if uid in _IMAGE_CLASSES_WITHOUT_IMAGE_IN_NAME:
        return True
    return "Image Storage" in uid.name


def series_matches(rules: Sequence[SelectionRule], ds: pydicom.Dataset) -> str | None:
    """Test one dataset (a series' representative header) against selection rules.

    Returns None when every rule matches, else one sentence saying which
    attribute and value made it not fit (patient-identifying values are never
    shown).
    """
    for rule in rules:
        reason = _rule_mismatch(rule, ds)
        if reason is not None:
            return reason
    return None


def select_inputs(manifest: Manifest, instances: Sequence[InputInstance]) -> AlgorithmInput:
    """Keep the instances of the series that fit ``manifest``; refuse the study when none does.

    Raises :class:`aifi.errors.InputNotAccepted` naming, per series, what did
    not fit, and :class:`aifi.errors.DicomInputError` when a stored instance
    is not readable DICOM.
    """
    if not instances:
        raise InputNotAccepted(f"no instances were given to algorithm {manifest.id!r}")
    reasons: list[str] = []
    candidates: list[InputInstance] = []
    for instance in instances:
        if manifest.accepts_non_images or is_image_sop_class(instance.sop_class_uid):
            candidates.append(instance)
        else:
            reasons.append(
                f"instance {instance.sop_instance_uid}: {UID(instance.sop_class_uid).name} "
                "is not an image"
            )

    kept: list[InputInstance] = []
    study_uids: set[str] = set()
    for series_uid, members in _by_series(candidates):
        ds = _read_header(members[0])
        study_uids.add(str(ds.get("StudyInstanceUID", "")))
        reason = series_matches(manifest.accepts, ds)
        if reason is None:
            kept.extend(members)
        else:
            reasons.append(f"series {series_uid}: {reason}")

    if len(study_uids) > 1:
        raise InputNotAccepted(
            f"the instances belong to {len(study_uids)} studies; a task is one study"
        )
    if not kept:
        raise InputNotAccepted(
            f"nothing in the study fits algorithm {manifest.id!r}: " + "; ".join(reasons)
        )
    for reason in reasons:
        logger.info("algorithm %s leaves out %s", manifest.id, reason)
    return AlgorithmInput(study_instance_uid=study_uids.pop(), instances=tuple(kept))


def _by_series(instances: Iterable[InputInstance]) -> list[tuple[str, list[InputInstance]]]:
    ordered = sorted(instances, key=lambda i: (i.series_instance_uid, i.sop_instance_uid))
    return [(uid, list(group)) for uid, group in groupby(ordered, lambda i: i.series_instance_uid)]


def _read_header(instance: InputInstance) -> pydicom.Dataset:
    try:
        return instance.read(stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise DicomInputError(
            f"instance {instance.sop_instance_uid} cannot be read as DICOM: {exc}"
        ) from exc


def _rule_mismatch(rule: SelectionRule, ds: pydicom.Dataset) -> str | None:
    values = _values(ds, rule.keyword)
    if not values:
        return f"{rule.keyword} is missing" if rule.required else None
    if not (rule.any_of or rule.patterns or rule.minimum is not None or rule.maximum is not None):
        return None
    if any(_value_fits(rule, value) for value in values):
        return None
    return f"{rule.keyword} is {_shown(rule.keyword, values)}, expected {_expected(rule)}"


def _values(ds: pydicom.Dataset, keyword: str) -> list[str]:
    if tag_for_keyword(keyword) is None:
        raise ValueError(f"selection rule keyword {keyword!r} is not a DICOM keyword")
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    return [str(item).strip() for item in items if str(item).strip()]


def _value_fits(rule: SelectionRule, value: str) -> bool:
    if any(value.casefold() == candidate.casefold() for candidate in rule.any_of):
        return True
    if any(fnmatch.fnmatch(value.casefold(), p.casefold()) for p in rule.patterns):
        return True
    if rule.minimum is None and rule.maximum is None:
        return False
    number = _number(rule.keyword, value)
    if number is None:
        return False
    return (rule.minimum is None or number >= rule.minimum) and (
        rule.maximum is None or number <= rule.maximum
    )


_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _number(keyword: str, value: str) -> float | None:
    """A number from a value; Age Strings (VR AS, PS3.5 §6.2) become years."""
    try:
        if dictionary_VR(keyword) == "AS":
            return int(value[:3]) * _AGE_UNIT_YEARS[value[3:].upper()]
        return float(value)
    except (ValueError, KeyError):
        return None


def _shown(keyword: str, values: list[str]) -> str:
    tag = tag_for_keyword(keyword)
    if tag is not None and tag >> 16 == 0x0010 and keyword not in _SHOWN_PATIENT_KEYWORDS:
        return "a value not shown (patient attribute)"
    text = "\\".join(values)
    if len(text) > _MAX_SHOWN_VALUE:
        text = text[:_MAX_SHOWN_VALUE] + "..."
    return repr(text)


def _expected(rule: SelectionRule) -> str:
    parts: list[str] = []
    if rule.any_of:
        parts.append("one of " + ", ".join(rule.any_of))
    if rule.patterns:
        parts.append("matching " + " or ".join(rule.patterns))
    if rule.minimum is not None or rule.maximum is not None:
        low = "" if rule.minimum is None else f"{rule.minimum:g}"
        high = "" if rule.maximum is None else f"{rule.maximum:g}"
        parts.append(f"within [{low}, {high}]")
    return " or ".join(parts)
