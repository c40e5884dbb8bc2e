"""A CPU-bound algorithm for the scale bench, loaded by the hub as ``_spin:Spin``.

``bench-spin`` burns ``AIFI_BENCH_SPIN_S`` seconds (default 0.5) of CPU in
pure Python, then runs the integrity check, so its results are real. It
shows whether more worker processes add throughput (threads would not: GIL).
``bench/`` must be on the worker's ``PYTHONPATH`` (the bench sets it).
"""

from __future__ import annotations

import dataclasses
import os
import time

from aifi.algorithms.base import AlgorithmInput, Findings, Manifest
from aifi.algorithms.integrity_check import ALGORITHM as INTEGRITY_CHECK
from aifi.algorithms.integrity_check import MANIFEST as INTEGRITY_MANIFEST


class Spin:
    manifest: Manifest = dataclasses.replace(
        INTEGRITY_MANIFEST, id="bench-spin", name="CPU-bound integrity check (bench)"
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        end = time.process_time() + float(os.environ.get("AIFI_BENCH_SPIN_S", "0.5"))
        x = 0
        while time.process_time() < end:
            x = (x * 31 + 7) % 1_000_003
        return INTEGRITY_CHECK.run(inputs)
