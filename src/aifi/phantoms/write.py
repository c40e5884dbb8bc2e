"""Writing phantom studies to disk, and handing them to an algorithm as its input."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom

from aifi.algorithms.base import AlgorithmInput, InputInstance

__all__ = ["as_algorithm_input", "write_study"]


def write_study(datasets: Sequence[pydicom.FileDataset], folder: Path) -> list[Path]:
    """Write each instance as ``<folder>/<SOPInstanceUID>.dcm`` (PS3.10 files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def as_algorithm_input(paths: Sequence[Path]) -> AlgorithmInput:
    """An :class:`AlgorithmInput` over written instances (one study)."""
    instances = []
    study_uid = ""
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study_uid = str(ds.StudyInstanceUID)
        instances.append(
            InputInstance(
                path=path,
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
            )
        )
    return AlgorithmInput(study_instance_uid=study_uid, instances=tuple(instances))
