"""Test-only algorithm plug-ins, loaded by the hub through ``algorithm_plugins``.

Each is the integrity check (so its results are real and verifiable) with a
twist a worker must survive:

* ``Hanging`` (``test-hang``) never returns; its manifest allows 2 s;
* ``Slow`` (``test-slow``) sleeps ``AIFI_TEST_SLOW_S`` seconds (default 3)
  before checking, long enough to kill its worker mid-run.

Loaded by name in child processes (``hub.plugin_algorithms:Hanging``), so
``tests/`` must be on the child's ``sys.path`` (pytest's is; a subprocess
gets ``PYTHONPATH``).
"""

from __future__ import annotations

import dataclasses
import os
import time

from aifi.algorithms.base import AlgorithmInput, Findings, Manifest, Resources
from aifi.algorithms.integrity_check import ALGORITHM as INTEGRITY_CHECK
from aifi.algorithms.integrity_check import MANIFEST as INTEGRITY_MANIFEST

HANG_LIMIT_S = 2.0


class Hanging:
    manifest: Manifest = dataclasses.replace(
        INTEGRITY_MANIFEST,
        id="test-hang",
        name="Hangs (test)",
        resources=Resources(time_limit_s=HANG_LIMIT_S),
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        while True:
            time.sleep(3600)


class Slow:
    manifest: Manifest = dataclasses.replace(
        INTEGRITY_MANIFEST, id="test-slow", name="Slow integrity check (test)"
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        time.sleep(float(os.environ.get("AIFI_TEST_SLOW_S", "3")))
        return INTEGRITY_CHECK.run(inputs)
