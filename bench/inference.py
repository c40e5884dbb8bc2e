"""CPU inference time of the three demo applications, per study and per image.

    .venv/bin/python bench/inference.py [--repeat 5]

Each application runs on one phantom study written as DICOM, the whole
``run`` timed (reading files, preprocessing, model, findings), after one
warm-up run that loads the ONNX Runtime session. ONNX Runtime uses one
thread, as in the hub's default worker.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from aifi.algorithms.base import Algorithm
from aifi.algorithms.bone_age import BoneAge
from aifi.algorithms.fracture import FractureDetection
from aifi.algorithms.incidental_pe import IncidentalPE
from aifi.phantoms import bone_age_study, chest_ct_series, fracture_study, write_study
from aifi.phantoms.write import as_algorithm_input


def bench(name: str, algorithm: Algorithm, paths: list[Path], repeat: int) -> None:
    inputs = as_algorithm_input(paths)
    algorithm.run(inputs)  # warm-up: session creation
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        algorithm.run(inputs)
        times.append(time.perf_counter() - start)
    per_study = statistics.median(times)
    print(
        f"{name:15s} {len(paths):4d} images  {per_study:7.3f} s/study  "
        f"{per_study / len(paths) * 1000:7.1f} ms/image"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU inference time per study and per image")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        studies = {
            "fracture": (FractureDetection(), fracture_study(fracture=True, seed=1)),
            "bone-age": (BoneAge(), bone_age_study(age_months=120, sex="F", seed=1)),
            "incidental-pe": (IncidentalPE(), chest_ct_series(embolus=True, seed=1)),
        }
        print(f"{'application':15s} {'n':>4s} images  median of {args.repeat} runs (CPU)")
        for name, (algorithm, datasets) in studies.items():
            bench(name, algorithm, write_study(datasets, work / name), args.repeat)


if __name__ == "__main__":
    main()
