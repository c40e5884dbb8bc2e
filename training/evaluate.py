"""Accuracy of the demo models on held-out phantoms, through the deployed algorithms.

    .venv/bin/python training/evaluate.py [--cases N]

Each case is a fresh phantom study (seeds from ``HELD_OUT_SEED_BASE``, never
used in training) written as DICOM files and read by the algorithm exactly
as the hub runs it: selection, preprocessing, pinned ONNX model, findings.
Needs no torch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aifi.algorithms.bone_age import BoneAge
from aifi.algorithms.fracture import FractureDetection
from aifi.algorithms.incidental_pe import IncidentalPE
from aifi.phantoms import (
    bone_age_study,
    chest_ct_series,
    chest_ct_volume,
    long_bone_radiograph,
    radiograph_dataset,
    write_study,
)
from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.hand import ADULT_BONE_AGE_MONTHS
from aifi.phantoms.long_bone import BODY_PARTS
from aifi.phantoms.write import as_algorithm_input

HELD_OUT_SEED_BASE = 9_000_000  # as in training/common.py, which needs torch to import


def auc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half)."""
    pos = np.array([s for s, y in zip(scores, labels, strict=True) if y])
    neg = np.array([s for s, y in zip(scores, labels, strict=True) if not y])
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def sens_spec(predicted: list[bool], labels: list[bool]) -> tuple[float, float]:
    tp = sum(p and y for p, y in zip(predicted, labels, strict=True))
    tn = sum(not p and not y for p, y in zip(predicted, labels, strict=True))
    return tp / max(sum(labels), 1), tn / max(len(labels) - sum(labels), 1)


def evaluate_fracture(cases: int, work: Path) -> None:
    algorithm = FractureDetection()
    study_scores, study_labels, image_scores, image_labels = [], [], [], []
    categories, hits, positives = [], 0, 0
    start = time.time()
    for case in range(cases):
        seed = HELD_OUT_SEED_BASE + case
        rng = np.random.default_rng(seed)
        fracture = bool(case % 2)
        part = sorted(BODY_PARTS)[int(rng.integers(len(BODY_PARTS)))]
        modality, photometric = (("DX", "MONOCHROME2"), ("CR", "MONOCHROME1"))[case % 4 // 2]
        context = StudyContext()
        images = [long_bone_radiograph(rng, fracture=fracture, body_part=part) for _ in range(2)]
        datasets = [
            radiograph_dataset(
                context,
                image,
                modality=modality,
                body_part=part,
                photometric=photometric,
                instance_number=n + 1,
            )
            for n, image in enumerate(images)
        ]
        findings = algorithm.run(as_algorithm_input(write_study(datasets, work / f"fx{case}")))
        study_scores.append(findings.details["score"])
        study_labels.append(fracture)
        categories.append(findings.details["category"])
        by_uid = {f.sop_instance_uid: f for f in findings.images}
        for ds, image in zip(datasets, images, strict=True):
            result = by_uid[ds.SOPInstanceUID]
            image_scores.append(result.measurements[0].value)
            image_labels.append(fracture)
            if fracture:
                positives += 1
                (truth,) = image.boxes
                if any(
                    min(b.x1, truth[2]) > max(b.x0, truth[0])
                    and min(b.y1, truth[3]) > max(b.y0, truth[1])
                    for b in result.boxes
                ):
                    hits += 1
    sens, spec = sens_spec([c == "positive" for c in categories], study_labels)
    sens_d, spec_d = sens_spec([c != "negative" for c in categories], study_labels)
    print(f"fracture ({cases} two-view studies, {2 * cases} images, {time.time() - start:.0f} s)")
    print(
        f"  image AUC {auc(image_scores, image_labels):.3f}; study AUC "
        f"{auc(study_scores, study_labels):.3f}"
    )
    print(
        f"  study positive (>= {algorithm.positive_threshold}): sensitivity {sens:.2f}, "
        f"specificity {spec:.2f}"
    )
    print(
        f"  study positive or doubtful (>= {algorithm.doubtful_threshold}): sensitivity "
        f"{sens_d:.2f}, specificity {spec_d:.2f}"
    )
    print(f"  fractured images with a box overlapping the true fracture: {hits}/{positives}")


def evaluate_bone_age(cases: int, work: Path) -> None:
    algorithm = BoneAge()
    errors: dict[str, list[float]] = {"F": [], "M": []}
    start = time.time()
    for case in range(cases):
        seed = HELD_OUT_SEED_BASE + case
        rng = np.random.default_rng(seed)
        sex = "M" if case % 2 else "F"
        bone_age = float(rng.uniform(6, ADULT_BONE_AGE_MONTHS[sex] - 6))
        study = bone_age_study(age_months=bone_age, sex=sex, seed=seed)
        findings = algorithm.run(as_algorithm_input(write_study(study, work / f"ba{case}")))
        errors[sex].append(findings.details["bone_age_months"] - bone_age)
    both = np.array(errors["F"] + errors["M"])
    print(f"bone-age ({cases} hands, {time.time() - start:.0f} s)")
    print(
        f"  mean absolute error {np.abs(both).mean():.1f} months (girls "
        f"{np.abs(errors['F']).mean():.1f}, boys {np.abs(errors['M']).mean():.1f}); "
        f"bias {both.mean():+.1f}; within 12 months {np.mean(np.abs(both) <= 12):.0%}"
    )


def evaluate_pe(cases: int, work: Path) -> None:
    algorithm = IncidentalPE()
    scores, labels, predicted, located, positives = [], [], [], 0, 0
    start = time.time()
    for case in range(cases):
        seed = HELD_OUT_SEED_BASE + case
        embolus = bool(case % 2)
        volume = chest_ct_volume(np.random.default_rng(seed), embolus=embolus)
        study = chest_ct_series(embolus=embolus, seed=seed, volume=volume)
        findings = algorithm.run(as_algorithm_input(write_study(study, work / f"pe{case}")))
        scores.append(findings.details["probability"])
        labels.append(embolus)
        predicted.append(findings.details["positive"])
        if embolus and findings.details["positive"]:
            positives += 1
            first = findings.details["locations"][0]
            ds = next(d for d in study if d.SOPInstanceUID == first["sop_instance_uid"])
            x = float(ds.ImagePositionPatient[0]) + first["column"] * volume.spacing_mm
            y = float(ds.ImagePositionPatient[1]) + first["row"] * volume.spacing_mm
            z = float(ds.ImagePositionPatient[2])
            if any(
                abs(z - e.z) <= e.half_length + 10 and np.hypot(x - e.x, y - e.y) < 30
                for e in volume.emboli
            ):
                located += 1
    sens, spec = sens_spec(predicted, labels)
    print(f"incidental-pe ({cases} CT volumes, {time.time() - start:.0f} s)")
    print(
        f"  AUC {auc(scores, labels):.3f}; at {algorithm.positive_threshold}: sensitivity "
        f"{sens:.2f}, specificity {spec:.2f}"
    )
    print(f"  true positives whose first location is on an embolus: {located}/{positives}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40, help="held-out studies per application")
    parser.add_argument("--only", choices=["fracture", "bone-age", "incidental-pe"])
    args = parser.parse_args()
    print("demo models on held-out phantoms (demo model — not for clinical use)")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.only in (None, "fracture"):
            evaluate_fracture(args.cases, work)
        if args.only in (None, "bone-age"):
            evaluate_bone_age(args.cases, work)
        if args.only in (None, "incidental-pe"):
            evaluate_pe(args.cases, work)


if __name__ == "__main__":
    main()
