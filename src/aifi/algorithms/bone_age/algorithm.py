"""Bone age from a posteroanterior radiograph of a child's hand.

Accepts one CR/DX image of the hand, PA, of a patient aged 0 to 19 years
(Patient's Age (0010,1010)) of known sex (Patient's Sex (0010,0040) M or F),
which is why those two attributes are kept by the pseudonymizer and the
birth date is not. Answers the bone age in months and years and its
standard deviation score against chronological age for that sex
(:mod:`aifi.algorithms.bone_age.reference`). The reference atlases are of
the left hand; a right hand (Image Laterality R) is mirrored first.

Coded (:mod:`aifi.algorithms.codes`): Bone age (85151-9, LN) in months,
chronological age as Age (30525-0, LN), the method as Bone age method
(85150-1, LN), Normality Normal/Abnormal (SDS within ±2 or not); the SDS
and the advanced/normal/delayed assessment use aifi's private codes, since
no standard concept names them; the procedure is Bones X-ray bone age
(37362-1, LN).

Priors: the manifest asks for the child's most recent earlier hand
radiograph of the last two years (:class:`aifi.core.manifest.Priors`), the
usual follow-up of growth disorders and their treatment. When one is given,
its bone age is read the same way and the result compares the two: how many
months the bone age advanced over how many months of chronological age
(from the Study Dates, both shifted by the same number of days when
pseudonymized, else from Patient's Age), in the summary and in ``details``
under ``prior``. The SR lists the prior study as other evidence.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from aifi.algorithms.base import (
    AlgorithmInput,
    Findings,
    ImageFinding,
    Manifest,
    Measurement,
    Priors,
    PriorStudyInput,
    Resources,
    SelectionRule,
    instances_of,
)
from aifi.algorithms.bone_age.model import canvas_for
from aifi.algorithms.bone_age.reference import REFERENCE_CITATION, sds
from aifi.algorithms.codes import (
    ABNORMAL,
    BONE_AGE_ASSESSMENT,
    BONE_AGE_METHOD,
    NO_UNITS,
    NORMAL,
    NORMALITY,
    XR_BONE_AGE,
)
from aifi.algorithms.codes import BONE_AGE as _BONE_AGE
from aifi.algorithms.codes import BONE_AGE_SDS as _BONE_AGE_SDS
from aifi.algorithms.codes import CHRONOLOGICAL_AGE as _CHRONOLOGICAL_AGE
from aifi.algorithms.codes import MONTHS as _MONTHS
from aifi.algorithms.onnx_model import PinnedModel, demo_note, load_model_spec
from aifi.algorithms.preprocess import pixel_spacing_mm, radiograph_frames
from aifi.errors import InputNotAccepted

__all__ = ["DEMO_STORE", "MAX_AGE_YEARS", "BoneAge", "age_in_months"]

logger = logging.getLogger(__name__)

DEMO_STORE = Path(__file__).parent / "weights"
MAX_AGE_YEARS = 19
SDS_LIMIT = 2.0

BONE_AGE = _BONE_AGE
CHRONOLOGICAL_AGE = _CHRONOLOGICAL_AGE
BONE_AGE_SDS = _BONE_AGE_SDS
ASSESSMENT = BONE_AGE_ASSESSMENT
MONTHS = _MONTHS
NO_UNIT = NO_UNITS
METHOD = "Greulich and Pyle"

_AGE = re.compile(r"^(\d{3})([DWMY])$")
_MONTHS_PER = {"D": 12 / 365.25, "W": 12 * 7 / 365.25, "M": 1.0, "Y": 12.0}


def age_in_months(value: str) -> float:
    """Months of an Age String (AS, PS3.5 6.2: ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``)."""
    match = _AGE.match(value.strip())
    if match is None:
        raise InputNotAccepted(f"Patient's Age {value!r} is not a valid Age String (nnnD/W/M/Y)")
    return int(match.group(1)) * _MONTHS_PER[match.group(2)]


def _years_months(months: float) -> str:
    whole = round(months)
    return f"{whole // 12} y {whole % 12} mo"


def _prior_hands(
    priors: tuple[PriorStudyInput, ...],
) -> list[tuple[pydicom.Dataset, str]]:
    """The first PA hand radiograph of each prior study, newest study first."""
    found: list[tuple[pydicom.Dataset, str]] = []
    for prior in priors:
        for instance in sorted(prior.instances, key=lambda i: i.sop_instance_uid):
            ds = instance.read()
            if refusal_reason(ds) is None:
                found.append((ds, prior.study_instance_uid))
                break
    found.sort(key=lambda item: str(item[0].get("StudyDate", "") or ""), reverse=True)
    return found


def _interval_months(
    earlier: pydicom.Dataset,
    later: pydicom.Dataset,
    then: dict[str, Any],
    now: dict[str, Any],
) -> tuple[float, str]:
    """Months between two studies and what they were taken from.

    From the Study Dates where the pseudonymizer kept them (shifted, by the same
    days for one patient), else from the Patient's Ages, which in years
    (``nnnY``) are only as precise as a year.
    """
    try:
        start = dt.datetime.strptime(str(earlier.StudyDate)[:8], "%Y%m%d").date()
        end = dt.datetime.strptime(str(later.StudyDate)[:8], "%Y%m%d").date()
    except (AttributeError, ValueError):
        months = now["chronological_age_months"] - then["chronological_age_months"]
        return round(months, 1), "PatientAge"
    return round((end - start).days * 12 / 365.25, 1), "StudyDate"


def refusal_reason(ds: pydicom.Dataset) -> str | None:
    """Why an instance is not a PA hand radiograph, or None."""
    modality = str(ds.get("Modality", ""))
    if modality not in ("CR", "DX"):
        return f"modality {modality or 'missing'} is not CR or DX"
    part = str(ds.get("BodyPartExamined", "")).upper()
    if part != "HAND":
        return f"body part {part or 'missing'} is not HAND"
    view = str(ds.get("ViewPosition", "PA")).upper() or "PA"
    if view != "PA":
        return f"view {view} is not posteroanterior (PA)"
    return None


def patient_context(ds: pydicom.Dataset) -> tuple[str, float]:
    """(sex, age in months) of the patient, or :class:`InputNotAccepted` with the reason."""
    sex = str(ds.get("PatientSex", "")).upper()
    if sex not in ("M", "F"):
        raise InputNotAccepted(
            "Patient's Sex must be M or F: the bone age reference differs by sex "
            f"(got {sex or 'empty'}); keep PatientSex when pseudonymizing"
        )
    if not ds.get("PatientAge"):
        raise InputNotAccepted(
            "Patient's Age (0010,1010) is missing; keep PatientAge when pseudonymizing"
        )
    months = age_in_months(str(ds.PatientAge))
    if months >= (MAX_AGE_YEARS + 1) * 12:
        raise InputNotAccepted(
            f"patient age {ds.PatientAge} is outside the range 0-{MAX_AGE_YEARS} years "
            "for which bone age is defined"
        )
    return sex, months


class BoneAge:
    """Bone age and SDS from a PA hand radiograph (ONNX model, pinned)."""

    def __init__(self, model_store: Path | None = None) -> None:
        self.spec = load_model_spec(model_store or DEMO_STORE, "bone-age")
        self.model = PinnedModel(self.spec)
        self.model.verify()  # a mismatched model fails at start-up, not on a patient's study
        self.manifest = Manifest(
            id="bone-age",
            version=self.spec.version,
            name="Bone age",
            vendor=self.spec.vendor,
            intended_use=(
                "Estimation of skeletal (bone) age from a posteroanterior radiograph of the "
                "left hand of a child or adolescent aged 0-19 years, with the standard "
                "deviation score against chronological age for the patient's sex."
            ),
            regulatory_status=self.spec.regulatory_status,
            accepts=(
                SelectionRule("Modality", any_of=("CR", "DX")),
                SelectionRule("BodyPartExamined", any_of=("HAND",)),
                SelectionRule("ViewPosition", any_of=("PA",), required=False),
                SelectionRule("PatientSex", any_of=("M", "F")),
                SelectionRule("PatientAge", patterns=("0[01]?Y", "???M", "???W", "???D")),
            ),
            keep_attributes=(
                "PatientSex",
                "PatientAge",
                "BodyPartExamined",
                "ViewPosition",
                "ImageLaterality",
                "PixelSpacing",
                "ImagerPixelSpacing",
                "EstimatedRadiographicMagnificationFactor",
                "CassetteSize",
                "CassetteOrientation",
                "PhotometricInterpretation",
                "RescaleSlope",
                "RescaleIntercept",
                "WindowCenter",
                "WindowWidth",
                "VOILUTSequence",
            ),
            produces=("sr", "sc"),
            resources=Resources(device="cpu", memory_mb=512, time_limit_s=60.0),
            model_sha256=self.spec.sha256,
            priors=Priors(years=2.0, same_body_part=True, max_studies=1),
        )

    def run(self, inputs: AlgorithmInput) -> Findings:
        """Read the first PA hand radiograph; refuse with the reason when there is none.

        With a prior study, its bone age is read too and compared (see the module).
        """
        reasons = []
        for instance in instances_of(inputs):
            ds = instance.read()
            reason = refusal_reason(ds)
            if reason is None:
                findings = self._read(ds, instance.sop_instance_uid)
                return self._compared(findings, ds, inputs.priors)
            reasons.append(reason)
        raise InputNotAccepted(
            "no PA radiograph of a hand in the study: "
            + "; ".join(sorted(set(reasons)) or ["no instances"])
        )

    def _compared(
        self, findings: Findings, ds: pydicom.Dataset, priors: tuple[PriorStudyInput, ...]
    ) -> Findings:
        """``findings`` with the comparison to the newest readable prior, when there is one."""
        for prior_ds, prior in _prior_hands(priors):
            try:
                earlier = self._read(prior_ds, str(prior_ds.SOPInstanceUID))
            except InputNotAccepted as exc:
                logger.info("bone-age: prior study %s not compared: %s", prior, exc)
                continue
            now = findings.details
            then = earlier.details
            interval, source = _interval_months(prior_ds, ds, then, now)
            change = round(now["bone_age_months"] - then["bone_age_months"], 1)
            comparison: dict[str, Any] = {
                "study_instance_uid": prior,
                "sop_instance_uid": str(prior_ds.SOPInstanceUID),
                "bone_age_months": then["bone_age_months"],
                "chronological_age_months": then["chronological_age_months"],
                "sds": then["sds"],
                "interval_months": interval,
                "interval_from": source,
                "bone_age_change_months": change,
            }
            about = "" if source == "StudyDate" else "about "
            summary = findings.summary + (
                f" Compared with the prior of {about}{interval:.0f} months earlier (bone age"
                f" {_years_months(then['bone_age_months'])}, SDS {then['sds']:+.1f}): bone age"
                f" {change:+.0f} months over {interval:.0f} months of chronological age."
            )
            return dataclasses.replace(
                findings, summary=summary, details={**findings.details, "prior": comparison}
            )
        return findings

    def _read(self, ds: pydicom.Dataset, sop_instance_uid: str) -> Findings:
        sex, age_months = patient_context(ds)
        mirror = str(ds.get("ImageLaterality", "L")).upper() == "R"
        unit = radiograph_frames(ds)[0]
        canvas, _ = canvas_for(unit, pixel_spacing_mm(ds), mirror=mirror)
        (prediction,) = self.model.run(
            {
                "image": canvas[None, None].astype(np.float32),
                "sex": np.array([[1.0 if sex == "M" else 0.0]], dtype=np.float32),
            }
        )
        bone_age = float(np.clip(prediction.ravel()[0], 0.0, (MAX_AGE_YEARS + 1) * 12))
        score = sds(bone_age, age_months, sex)
        assessment = (
            "advanced" if score > SDS_LIMIT else "delayed" if score < -SDS_LIMIT else "normal"
        )
        measurements = (
            Measurement(BONE_AGE, round(bone_age, 1), MONTHS),
            Measurement(CHRONOLOGICAL_AGE, round(age_months, 1), MONTHS),
            Measurement(BONE_AGE_SDS, round(score, 2), NO_UNIT),
        )
        summary = (
            f"Bone age {_years_months(bone_age)} ({bone_age:.0f} months); chronological age "
            f"{_years_months(age_months)}; SDS {score:+.1f} ({assessment}, "
            f"Greulich & Pyle reference){demo_note(self.spec)}"
        )
        logger.info("bone-age: %.1f months, SDS %.2f", bone_age, score)
        normality = ((NORMALITY, NORMAL if assessment == "normal" else ABNORMAL),)
        return Findings(
            summary=summary,
            finding=None,
            finding_type=BONE_AGE,
            evaluations=normality,
            procedure=XR_BONE_AGE,
            urgent=False,
            measurements=measurements,
            images=(
                ImageFinding(
                    sop_instance_uid=sop_instance_uid,
                    measurements=measurements[:1],
                    texts=((ASSESSMENT, assessment), (BONE_AGE_METHOD, METHOD)),
                    evaluations=normality,
                ),
            ),
            demo_model=self.spec.demo,
            details={
                "bone_age_months": round(bone_age, 1),
                "bone_age_years": round(bone_age / 12, 2),
                "chronological_age_months": round(age_months, 1),
                "sex": sex,
                "sds": round(score, 2),
                "assessment": assessment,
                "mirrored_right_hand": mirror,
                "reference": REFERENCE_CITATION,
                "model": {"version": self.spec.version, "sha256": self.spec.sha256},
            },
        )
