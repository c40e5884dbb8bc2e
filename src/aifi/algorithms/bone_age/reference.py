"""Bone age standard deviation score (SDS) against a published reference.

SDS = (bone age - chronological age) / SD(chronological age, sex), with the
SD from the Greulich & Pyle atlas table derived from the Brush Foundation
Study (``greulich_pyle_sd.csv``, which carries the full citation). Between
tabulated ages the SD is interpolated linearly; beyond either end of a sex's
table (3 months; 17 years for boys, 16 years for girls, as published) the
nearest tabulated SD is used. An empty cell means "not published".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

__all__ = ["REFERENCE_CITATION", "ReferenceTable", "reference_table", "sds"]

_TABLE = Path(__file__).parent / "greulich_pyle_sd.csv"
REFERENCE_CITATION = (
    "Greulich WW, Pyle SI. Radiographic Atlas of Skeletal Development of the Hand and "
    "Wrist, 2nd ed. Stanford University Press, 1959 (SD table from the Brush Foundation Study)"
)


@dataclass(frozen=True)
class ReferenceTable:
    """Ages (months) and the SD of bone age (months) for each sex."""

    ages: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]

    def sd_at(self, age_months: float, sex: str) -> float:
        """SD of bone age at ``age_months`` for ``sex`` ('F' or 'M')."""
        if sex not in self.sd:
            raise ValueError(f"sex must be 'F' or 'M', not {sex!r}")
        return float(np.interp(age_months, self.ages[sex], self.sd[sex]))


@cache
def reference_table() -> ReferenceTable:
    """The packaged Greulich & Pyle SD table."""
    with _TABLE.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    ages: dict[str, np.ndarray] = {}
    sd: dict[str, np.ndarray] = {}
    for sex, column in (("M", "sd_male_months"), ("F", "sd_female_months")):
        published = [r for r in rows if r[column].strip()]
        ages[sex] = np.array([float(r["chronological_age_months"]) for r in published])
        sd[sex] = np.array([float(r[column]) for r in published])
    return ReferenceTable(ages=ages, sd=sd)


def sds(bone_age_months: float, age_months: float, sex: str) -> float:
    """Standard deviation score of a bone age against chronological age and sex."""
    return (bone_age_months - age_months) / reference_table().sd_at(age_months, sex)
