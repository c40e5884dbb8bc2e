"""Routing rules: which series of a stable study go to which algorithm.

Rules are data in ``edge.toml``; this module only executes them::

    [[rules]]
    name = "hand radiographs to bone age"
    algorithm = "bone-age"
    match = { Modality = ["CR", "DX"], BodyPartExamined = ["HAND"] }
    patterns = { SeriesDescription = ["*hand*"] }
    min_age_years = 0
    max_age_years = 19
    priority = "urgent"        # optional: stat | urgent | routine (default) | low

Values in ``match`` compare case-insensitively and exactly; values in
``patterns`` are shell-style patterns (``fnmatch``), also case-insensitive.
A series matches a rule when every listed attribute matches one of its
values. Age comes from PatientAge (PS3.5 AS, e.g. ``"012Y"``) or, when that
is absent, from PatientBirthDate and StudyDate.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.datadict import keyword_dict

__all__ = ["NON_IMAGE_MODALITIES", "RULE_PRIORITY", "Rule", "age_in_years", "rule_matches"]

# Object types that are not images: not sent to algorithms unless a rule asks.
NON_IMAGE_MODALITIES = frozenset({"PR", "KO", "SR", "DOC", "REG", "RTSTRUCT", "RTPLAN", "SEG"})

#: A rule's priority as Scheduled Procedure Step Priority (0074,1200): stat and urgent are HIGH.
RULE_PRIORITY = {"stat": "HIGH", "urgent": "HIGH", "routine": "MEDIUM", "low": "LOW"}


class Rule(BaseModel):
    """One routing rule; unknown keys are refused (``mach =`` must not mean "match everything")."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    algorithm: str = Field(min_length=1)
    match: dict[str, list[str]] = Field(default_factory=dict)
    patterns: dict[str, list[str]] = Field(default_factory=dict)
    min_age_years: float | None = None
    max_age_years: float | None = None
    include_non_images: bool = False
    priority: Literal["stat", "urgent", "routine", "low"] = "routine"

    @field_validator("match", "patterns")
    @classmethod
    def _dicom_keywords(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        """Keys are DICOM keywords (PS3.6 §6); a misspelt one would match nothing, silently."""
        unknown = sorted(k for k in value if k not in keyword_dict)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} is not a DICOM keyword (PS3.6), e.g. Modality,"
                " BodyPartExamined, SeriesDescription"
            )
        return value


def age_in_years(attrs: Mapping[str, Any]) -> float | None:
    """Patient age at the study, from PatientAge or birth date and study date."""
    age = str(attrs.get("PatientAge") or "").strip().upper()
    if len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY":
        divisor = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[age[3]]
        return int(age[:3]) / divisor
    birth = _parse_da(attrs.get("PatientBirthDate"))
    study = _parse_da(attrs.get("StudyDate"))
    if birth is None or study is None:
        return None
    return (study - birth).days / 365.25


def _parse_da(value: Any) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _is_non_image(attrs: Mapping[str, Any]) -> bool:
    modality = str(attrs.get("Modality") or "").upper()
    sop_class = str(attrs.get("SOPClassUID") or "")
    return modality in NON_IMAGE_MODALITIES or sop_class == "1.2.840.10008.1.3.10"


def rule_matches(rule: Rule, attrs: Mapping[str, Any]) -> bool:
    """Whether a series, described by the attributes of one of its instances, matches."""
    if _is_non_image(attrs) and not rule.include_non_images:
        return False
    for keyword, values in rule.match.items():
        actual = str(attrs.get(keyword) or "").strip().upper()
        if actual not in {v.strip().upper() for v in values}:
            return False
    for keyword, pats in rule.patterns.items():
        actual = str(attrs.get(keyword) or "").strip().lower()
        if not any(fnmatch.fnmatchcase(actual, p.lower()) for p in pats):
            return False
    if rule.min_age_years is not None or rule.max_age_years is not None:
        age = age_in_years(attrs)
        if age is None:
            return False
        if rule.min_age_years is not None and age < rule.min_age_years:
            return False
        if rule.max_age_years is not None and age > rule.max_age_years:
            return False
    return True
