"""The de-identification profile as data: Table E.1-1 and the safe list.

DICOM PS3.15 Annex E, Table E.1-1 lists every attribute the Basic
Application Level Confidentiality Profile acts on, with its action (D, Z, X,
K, C, U and combinations such as X/Z/D) and its action under each option.
The table lives in ``data/table_e1_1.csv`` (its header names the edition);
``data/safe_attributes.csv`` lists the standard attributes the table does
not name that may pass because images and algorithms need them: ``always``, or
``on request`` when an algorithm's keep list names them; a text VR on it says
how its value is vetted (``vocabulary`` or ``code``, :mod:`aifi.deid.descriptors`).
This module only loads the two files and resolves one row to one action.

Combined actions depend on the attribute's type in the IOD (PS3.15 E.1.1,
note on "X/Z" etc.). Without per-IOD knowledge the resolution is
conservative but keeps objects valid: anything with ``U`` replaces UIDs (and
for a sequence, ``U*``, keeps it with its UIDs replaced), ``X/Z``, ``Z/D``
and ``X/Z/D`` become ``Z`` (present, empty), ``X/D`` becomes ``X``.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources

from pydicom.datadict import tag_for_keyword

from aifi.deid.options import DeidOptions

__all__ = ["Profile", "Rule", "load_profile"]

_OPTION_COLUMNS = (
    "retain_patient_characteristics",
    "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_uids",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1."""

    tag: str
    keyword: str
    name: str
    basic: str
    options: dict[str, str] = field(default_factory=dict)

    def action(self, options: DeidOptions) -> str:
        """The single action (X, Z, D, K, C or U) this row asks for under ``options``."""
        action = _resolve(self.basic)
        if options.retain_patient_characteristics:
            action = self.options.get("retain_patient_characteristics", action)
        if options.retain_longitudinal_modified_dates:
            action = self.options.get("retain_longitudinal_modified_dates", action)
        if options.clean_descriptors:
            action = self.options.get("clean_descriptors", action)
        if options.clean_graphics and "clean_graphics" in self.options:
            # E.3.3 allows graphics once cleaned; aifi cannot vet an overlay bitmap or
            # a graphic annotation's text, so under this option they go entirely.
            action = "X"
        return action


def _resolve(basic: str) -> str:
    if "U" in basic:
        return "U"
    if basic in {"X/Z", "Z/D", "X/Z/D"}:
        return "Z"
    if basic == "X/D":
        return "X"
    return basic


#: Options whose action the engine implements (aifi.deid.options.DeidOptions); a row's action
#: under another option (Retain Device Identity, Retain UIDs, ...) never applies.
IMPLEMENTED_OPTIONS = (
    "retain_patient_characteristics",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
    "clean_graphics",
)


@dataclass(frozen=True)
class Profile:
    """Table E.1-1 indexed by tag, plus the safe list."""

    edition: str
    rules: dict[int, Rule]
    safe: frozenset[int]
    version: str = "1"
    #: safe-listed tags that pass only when an algorithm asks for them
    on_request: frozenset[int] = frozenset()
    #: safe-listed tags of a text VR -> how their value is vetted ("vocabulary" or "code")
    text: dict[int, str] = field(default_factory=dict)

    def actions(self, tag: int) -> frozenset[str]:
        """Every action the row of ``tag`` allows under the implemented options (PS3.15 E.1.1).

        ``X/Z/D`` allows X, Z and D; ``U*`` is U. Empty when the table has no row.
        """
        rule = self.rule_for(tag)
        if rule is None:
            return frozenset()
        found = set(rule.basic.replace("*", "").split("/"))
        found.update(rule.options[o] for o in IMPLEMENTED_OPTIONS if rule.options.get(o))
        return frozenset(found)

    def keepable(self, tag: int) -> bool:
        """Whether an algorithm may ask to keep ``tag``: safe-listed, or the table lets it be
        kept or cleaned under an implemented option (sex, age, descriptions, ...)."""
        if tag in self.safe or tag in self.on_request:
            return True
        return bool(self.actions(tag) & {"K", "C"})

    def rule_for(self, tag: int) -> Rule | None:
        """The row for ``tag``, including the repeating groups 50xx (curves) and 60xx (overlays)."""
        found = self.rules.get(tag)
        if found is not None:
            return found
        group, elem = tag >> 16, tag & 0xFFFF
        if group & 0xFF01 == 0x5000:
            return self.rules.get(0x50000000)
        if group & 0xFF01 == 0x6000 and elem in (0x3000, 0x4000):
            return self.rules.get(0x60000000 | elem)
        return None

    def is_safe(self, tag: int) -> bool:
        """On the safe list for every algorithm (not only on request)."""
        return tag in self.safe


def _data_lines(name: str) -> tuple[list[str], Iterator[dict[str, str]]]:
    text = resources.files("aifi.deid").joinpath("data", name).read_text(encoding="utf-8")
    lines = text.splitlines()
    comments = [line[1:].strip() for line in lines if line.startswith("#")]
    rows = csv.DictReader(line for line in lines if line and not line.startswith("#"))
    return comments, rows


def _tag_value(text: str) -> int:
    return int(text.lower().replace("x", "0"), 16)


@functools.cache
def load_profile() -> Profile:
    """Load the packaged table and safe list (once per process)."""
    comments, rows = _data_lines("table_e1_1.csv")
    rules: dict[int, Rule] = {}
    for row in rows:
        options = {c: row[c] for c in _OPTION_COLUMNS if row.get(c)}
        rule = Rule(row["tag"], row["keyword"], row["name"], row["basic"], options)
        rules[_tag_value(row["tag"])] = rule
    _, safe_rows = _data_lines("safe_attributes.csv")
    safe: set[int] = set()
    on_request: set[int] = set()
    text: dict[int, str] = {}
    for row in safe_rows:
        tag = tag_for_keyword(row["keyword"])
        if tag is None:  # pragma: no cover - guarded by a test on the data file
            raise ValueError(f"safe list names unknown keyword {row['keyword']!r}")
        (on_request if row.get("scope") == "on request" else safe).add(tag)
        if row.get("text"):
            text[tag] = row["text"]
    version = next(
        (c.split(":", 1)[1].strip() for c in comments if c.startswith("Table version:")), "?"
    )
    return Profile(
        " ".join(comments[:3]), rules, frozenset(safe), version, frozenset(on_request), text
    )
